"""Drop-in integrations of fastgan's steps into other libraries' training loops.

Each submodule imports its library on import (``fastgan.integrations.ctgan`` needs the
``fastgan[ctgan]`` extra); importing this package imports none of them.
"""
