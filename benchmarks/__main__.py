"""`python -m benchmarks` = `busi-bench`."""

from benchmarks.cli import main

main()
