"""How long one full garbage collection holds the thread that runs it, with the service up,
its startup heap frozen (as ``running_service`` leaves it) and not.

    python -m bench.collector
"""

import asyncio
import gc
import tempfile
import time

from config import load_settings
from roomscribe.service import running_service


def _timed_collection_ms() -> float:
    began = time.perf_counter()
    gc.collect()
    return (time.perf_counter() - began) * 1000


async def measure() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="roomscribe-collector-") as data_dir:
        async with running_service(load_settings(data_dir=data_dir)):
            frozen_objects = gc.get_freeze_count()
            frozen_ms = _timed_collection_ms()
            gc.unfreeze()
            unfrozen_ms = _timed_collection_ms()
            gc.freeze()
    return {"objects": frozen_objects, "frozen_ms": frozen_ms, "unfrozen_ms": unfrozen_ms}


def main() -> None:
    result = asyncio.run(measure())
    print(
        f"service up, {result['objects']:,.0f} objects alive: full collection "
        f"{result['frozen_ms']:.1f} ms with the startup heap frozen, "
        f"{result['unfrozen_ms']:.1f} ms without"
    )


if __name__ == "__main__":
    main()
