"""Entry points over the pipeline: the command line, the asv glue and suites' machinery, the kernel
alert, distributed runs and the profiler."""
