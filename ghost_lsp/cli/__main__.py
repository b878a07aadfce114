"""`python -m ghost_lsp.cli` = the `ghost-lsp` command."""

import sys

from ghost_lsp.cli import main

sys.exit(main())
