"""The eval-reserved list is a file of the repository (data/eval-reserved.txt), read by the
corpus builder and the evals; while the team's shared copy exists beside the checkout, the two agree."""

from __future__ import annotations

import pytest

from ghost_lsp.paths import EVAL_RESERVED, REPO
from ghost_lsp.tools.evals.sources import reserved_packages
from ghost_lsp.tools.modelkit.corpus import load_reserved
from ghost_lsp.tools.modelkit.recipe import RESERVED

SHARED = REPO.parent / "shared" / "eval-reserved.txt"


def test_the_code_reads_the_repository_copy():
    assert RESERVED == EVAL_RESERVED and EVAL_RESERVED.is_file()
    assert reserved_packages() == load_reserved(EVAL_RESERVED)
    assert len(reserved_packages()) >= 10


@pytest.mark.skipif(not SHARED.is_file(), reason="no shared eval-reserved.txt beside this checkout")
def test_the_repository_copy_agrees_with_the_shared_one():
    assert load_reserved(EVAL_RESERVED) == load_reserved(SHARED)
