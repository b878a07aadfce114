from ghost_lsp.tools.modelkit.tokenizer import SPECIAL_TOKENS, train_tokenizer

TEXTS = ["def f(x):\n    return x + 1\n", "class A:\n    def m(self):\n        pass\n"] * 50


def test_round_trip_special_tokens_and_whitespace_runs():
    tok = train_tokenizer(TEXTS, vocab_size=400)
    for text in ["def héllo(x):\n        return '😀'\n", "\t\tx = {'a': [1, 2]}\r\n", ""]:
        assert tok.decode(tok.encode(text).ids) == text
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    # a FIM marker in text is one token, not spelled out
    assert tok.encode("<fim_prefix>x").ids[0] == tok.token_to_id("<fim_prefix>")
    # indentation runs become single tokens
    assert any(t.startswith("Ċ") and t.count("Ġ") >= 4 for t in tok.encode("x\n        y").tokens)
