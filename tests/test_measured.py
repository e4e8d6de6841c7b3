"""A task's measured CPU seconds (workers.runtime.measured), which compare reports per selector."""
from __future__ import annotations

import subprocess
import sys

from workers.runtime import measured

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"


def test_cpu_of_a_task_counts_the_child_processes_it_waited_for():
    """The classifier fits its models in child processes: their CPU is the task's too."""
    def task() -> dict:
        subprocess.run([sys.executable, "-c", BURN], check=True)
        return {"rows": 1}

    out = measured(task)()
    assert out["rows"] == 1 and out["cpu_s"] >= 0.38


def test_cpu_of_a_task_counts_its_own_work_and_not_the_time_it_waited():
    def task() -> dict:
        import time
        t = time.process_time()
        while time.process_time() - t < 0.2:
            pass
        time.sleep(0.5)
        return {}

    assert 0.18 <= measured(task)()["cpu_s"] < 0.45   # os.times counts in clock ticks (10 ms)
