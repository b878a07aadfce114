"""`ghost-lsp prompt`: the exact prompt and the table of contributions; the server's index upkeep."""

import asyncio
import json
import shutil

from ghost_lsp.cli import main
from ghost_lsp.context.index import ProjectIndex


def make_project(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'shop'\n")
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "models.py").write_text("class Order:\n    def total(self) -> float:\n        return 0.0\n")
    (tmp_path / "shop" / "orders.py").write_text("def total_price(order, tax):\n    return order.total() * tax\n")
    app = tmp_path / "app.py"
    app.write_text("from shop.models import Order\n\ndef run(order: Order, tax):\n    total = order.total()\n    \n")
    return app


def roomy_model(tiny_model_dir, tmp_path):
    """The tiny model's tokenizer with a context long enough for every snippet to fit."""
    out = tmp_path / "model"
    shutil.copytree(tiny_model_dir, out)
    m = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**m, "context_length": 4096}))
    return out


def test_prompt_command_prints_prompt_and_contributions(tmp_path, tiny_model_dir, capsys):
    app = make_project(tmp_path / "proj")
    model = roomy_model(tiny_model_dir, tmp_path)
    rc = main(["prompt", str(app), "--line", "5", "--col", "5", "--model", str(model),
               "--open", str(tmp_path / "proj" / "shop" / "orders.py")])
    out = capsys.readouterr().out
    assert rc == 0
    prompt = out.split("=== end of prompt ===")[0]
    assert "# path: shop/models.py\n" in prompt and "# path: shop/orders.py\n" in prompt
    assert prompt.index("class Order") < prompt.index("def run(order: Order, tax):")
    table = out.split("=== end of prompt ===")[1]
    assert "project     shop/models.py" in table and "open_files  shop/orders.py" in table
    assert "provider project: 1 snippet(s)" in table and "index: 4 modules" in table

    rc = main(["prompt", str(app), "--line", "5", "--col", "5", "--model", str(model), "--json",
               "--providers", ""])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and "class Order" not in data["prompt"] and data["tokens"] <= data["budget"]
    assert [p["source"] for p in data["parts"]] == ["prefix", "suffix"]


def test_prompt_command_rejects_bad_input(tmp_path, tiny_model_dir, capsys):
    app = make_project(tmp_path)
    assert main(["prompt", str(app), "--line", "99", "--col", "1", "--model", str(tiny_model_dir)]) == 1
    assert main(["prompt", str(app), "--line", "1", "--col", "1", "--model", str(tiny_model_dir),
                 "--providers", "telepathy"]) == 1
    assert main(["prompt", str(app), "--line", "1", "--col", "1", "--model", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "outside" in err and "unknown provider(s) telepathy" in err and "cannot load" in err


def test_server_reindexes_on_save_and_on_deleted_watched_file(tmp_path):
    from ghost_lsp.lsp.server import create_server

    app = make_project(tmp_path)
    server = create_server()
    server.completer.index = idx = ProjectIndex(tmp_path)
    idx.build()
    models = tmp_path / "shop" / "models.py"
    models.write_text("class Order:\n    def total(self, currency: str) -> float:\n        return 0.0\n")
    asyncio.run(server.reindex(models.as_uri()))
    assert "currency: str" in idx.definition("shop.models", "Order")[1]
    asyncio.run(server.reindex(models.as_uri(), deleted=True))
    assert idx.module("shop.models") is None
    asyncio.run(server.reindex("untitled:Untitled-1"))  # not a file: ignored
    assert idx.module("app") is not None and app.exists()
