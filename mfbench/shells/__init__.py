"""Entry points over the pipeline: the command line, the asv glue and suites' machinery, the kernel
alert, the sharded provider's check and the profiler."""
