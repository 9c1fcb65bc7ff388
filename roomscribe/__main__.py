import sys

from roomscribe.cli import main

sys.exit(main())
