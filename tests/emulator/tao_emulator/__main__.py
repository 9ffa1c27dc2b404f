"""``python -m tao_emulator {cosmos-rl,cosmos-predict2.5,tao-dataservices} ARGS...``."""

import sys

from .cli import main

sys.exit(main())
