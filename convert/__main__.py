"""`python -m convert` = `busi-convert`."""

from convert.cli import main

main()
