"""
The command lines: ``twistd yadiskpush`` (:mod:`yadiskpush.cli.options`, the
daemon) and the ``yadiskpush`` console script for everything a person runs
once, such as getting a token.
"""
