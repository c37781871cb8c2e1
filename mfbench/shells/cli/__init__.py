"""The ``mfbench`` command line (``main``), its parser (``parser``), and its commands by kind: ``machine``
(info, flops), ``measuring`` (run, layers, bench, profile), ``reading`` (show, compare) and ``training``
(train, snapshot); ``common`` holds what they share."""
