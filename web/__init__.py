"""The caption overlay page (``overlay.html``) and its built script (``static/overlay.js``)."""
