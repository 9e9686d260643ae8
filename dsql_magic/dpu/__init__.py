"""DPU per cell: a ledger of what each cell cost, from the emulator's meter, EXPLAIN estimates or
CloudWatch, each figure labelled with where it came from."""
