"""Model families: detection from a tokenizer's special tokens and config, and each family's FIM
prompt rendered by the real prompt builder, checked token for token against the family's
documented format (the source is cited in each prompts/<family>.toml).

The tokenizers are built here with the `tokenizers` library the way each family's is built:
byte-level BPE with added special tokens (Qwen, DeepSeek-Coder, StarCoder, SantaCoder,
CodeGen), SentencePiece-style with "▁" for spaces and byte fallback (Code Llama with the dummy
prefix space, CodeGemma without). The expected ids are assembled piece by piece, as each
family's documentation or reference code assembles them.
"""

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

from ghost_lsp.completion.prompt import build_prompt, load_template, template_for
from ghost_lsp.engine.manifest import Manifest
from ghost_lsp.tools.modelkit.families import FAMILIES, FamilyError, detect_family
from ghost_lsp.tools.modelkit.tiny import TINY_CORPUS, train_tiny_tokenizer
from ghost_lsp.types import Context, Snippet

PREFIX = "def add(a, b):\n    return "
SUFFIX = "\n\nprint(add(1, 2))\n"
PATH = "pkg/main.py"
OTHER = Snippet("pkg/util.py", "def sub(a, b):\n    return a - b\n", score=1.0, source="open_files")

SPECIALS = {
    "qwen": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>",
             "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"],
    "deepseek": ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜fim▁hole｜>", "<｜fim▁begin｜>",
                 "<｜fim▁end｜>", "<|EOT|>"],
    "starcoder": ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
                  "<filename>", "<gh_stars>"],
    "starcoder2": ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
                   "<repo_name>", "<file_sep>", "<issue_start>"],
    "santacoder": ["<|endoftext|>", "<fim-prefix>", "<fim-middle>", "<fim-suffix>", "<fim-pad>"],
    "codegen": ["<|endoftext|>", "<mask_1>", "<sep>", "<eom>"],
    "codellama": ["<unk>", "<s>", "</s>", "▁<PRE>", "▁<MID>", "▁<SUF>", "▁<EOT>"],
    "codegemma": ["<pad>", "<eos>", "<bos>", "<unk>", "<|fim_prefix|>", "<|fim_middle|>",
                  "<|fim_suffix|>", "<|file_separator|>"],
    "phi3": ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>"],
}
MODEL_TYPE = {"qwen": "qwen2", "deepseek": "llama", "starcoder": "gpt_bigcode", "starcoder2": "starcoder2",
              "santacoder": "gpt_bigcode", "codegen": "llama", "codellama": "llama", "codegemma": "gemma",
              "phi3": "phi3"}
SENTENCEPIECE = {"codellama": True, "codegemma": False, "phi3": True}  # value: dummy prefix space


def byte_level(specials, vocab_size: int = 500):
    """GPT-2 style byte-level BPE (trained on the tiny corpus) with the family's special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    from tokenizers import trainers
    tok.train_from_iterator([TINY_CORPUS] * 4, trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=0, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def sentencepiece(specials, dummy_prefix):
    """Llama/Gemma style: spaces as "▁", one token per character, byte fallback (<0x0A> for a
    newline); special tokens are matched on the raw text. The dummy prefix space is put before
    the text's first piece only, as transformers' Llama conversion does (Metaspace, "first")."""
    chars = sorted(set(TINY_CORPUS.replace(" ", "").replace("\n", "")) | {"▁"})
    vocab = {t: i for i, t in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>" if "<unk>" in vocab else None,
                               byte_fallback=True))
    if dummy_prefix:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    else:
        tok.normalizer = normalizers.Replace(" ", "▁")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


def tokenizer_for(kind):
    if kind in SENTENCEPIECE:
        return sentencepiece(SPECIALS[kind], SENTENCEPIECE[kind])
    return byte_level(SPECIALS[kind])


def sp_ids(tok, text, dummy_prefix):
    """SentencePiece's encoding of plain text: ("▁" +) text with spaces as "▁", a token per
    character, bytes for the rest (what `sp.encode` gives with this vocabulary)."""
    vocab = tok.get_vocab()
    text = ("▁" if dummy_prefix else "") + text.replace(" ", "▁")
    out = []
    for c in text:
        out += [vocab[c]] if c in vocab else [vocab[f"<0x{b:02X}>"] for b in c.encode()]
    return out


def manifest_for(kind, tok):
    det = detect_family(tok.get_vocab(), MODEL_TYPE[kind])
    fields = {"fim_prefix": det.fim_prefix, "fim_suffix": det.fim_suffix, "fim_middle": det.fim_middle} if det.fim else {}
    return det, Manifest(name=kind, family=det.family.name, fim=det.fim, eos_token=det.eos_token,
                         stop_tokens=det.stop_tokens, context_length=4096, **fields)


def rendered_ids(kind, snippets=()):
    tok = tokenizer_for(kind)
    det, manifest = manifest_for(kind, tok)
    ctx = Context(prefix=PREFIX, suffix=SUFFIX, path=PATH, language="python", snippets=list(snippets))
    count = lambda text: len(tok.encode(text, add_special_tokens=False).ids)  # noqa: E731
    prompt = build_prompt(ctx, manifest, count, 64)
    return tok, det, prompt, tok.encode(prompt.text, add_special_tokens=False).ids


def sid(tok, token):
    i = tok.token_to_id(token)
    assert i is not None, token
    return [i]


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


# -- detection ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,family,eos", [
    ("qwen", "qwen", "<|endoftext|>"),
    ("deepseek", "deepseek", "<｜end▁of▁sentence｜>"),
    ("starcoder", "starcoder", "<|endoftext|>"),
    ("starcoder2", "starcoder2", "<|endoftext|>"),
    ("santacoder", "santacoder", "<|endoftext|>"),
    ("codegen", "codegen", "<eom>"),
    ("codellama", "codellama", "▁<EOT>"),
    ("codegemma", "codegemma", "<|file_separator|>"),
    ("phi3", "plain", "<|endoftext|>"),
])
def test_family_is_detected_from_special_tokens_and_model_type(kind, family, eos):
    tok = tokenizer_for(kind)
    det = detect_family(tok.get_vocab(), MODEL_TYPE[kind], config_eos="<|endoftext|>" if kind == "phi3" else None)
    assert det.family.name == family and det.eos_token == eos
    assert det.fim == (family != "plain")
    for t in (det.fim_prefix, det.fim_suffix, det.fim_middle) if det.fim else ():
        assert tok.token_to_id(t) is not None or (kind, t) == ("codegen", "")  # real vocabulary entries
    assert all(tok.token_to_id(t) is not None for t in det.stop_tokens) and eos not in det.stop_tokens
    load_template(family)  # every family has its template


def test_stop_tokens_are_the_familys_own():
    det = detect_family(tokenizer_for("qwen").get_vocab(), "qwen2")
    assert set(det.stop_tokens) == {"<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|im_end|>"}
    det = detect_family(tokenizer_for("codegemma").get_vocab(), "gemma")
    assert det.stop_tokens == ["<eos>"]


def test_the_projects_own_tokenizer_is_starcoder_style():
    det = detect_family(train_tiny_tokenizer().get_vocab(), "llama")
    assert (det.family.name, det.fim_prefix, det.eos_token) == ("starcoder", "<fim_prefix>", "<|endoftext|>")


def test_qwen_sentinels_on_a_gemma_config_are_codegemma():
    vocab = {t: i for i, t in enumerate(SPECIALS["qwen"])}
    assert detect_family(vocab, "gemma").family.name == "codegemma"
    assert detect_family(vocab, "qwen2").family.name == "qwen"


def test_no_fim_tokens_is_plain_and_says_why():
    det = detect_family({"a": 0, "<|endoftext|>": 1}, "mistral", config_eos="</s>")
    assert det.family.name == "plain" and not det.fim and det.eos_token == "</s>"
    assert "no fill-in-the-middle" in det.reason
    det = detect_family({"a": 0}, "someformer")
    assert det.family.name == "plain" and "no fill-in-the-middle tokens" in det.reason


def test_family_override():
    vocab = tokenizer_for("starcoder2").get_vocab()
    assert detect_family(vocab, "starcoder2", override="starcoder").family.name == "starcoder"
    assert detect_family(vocab, "starcoder2", override="plain").fim is False
    with pytest.raises(FamilyError, match="lacks <\\|fim_prefix\\|>"):
        detect_family(vocab, "starcoder2", override="qwen")
    with pytest.raises(FamilyError, match="unknown family 'gpt5'"):
        detect_family(vocab, "starcoder2", override="gpt5")


def test_every_family_has_a_template_with_its_sentinels():
    for fam in FAMILIES.values():
        t = load_template(fam.name)
        assert t.fim == (fam.sentinels is not None)
        assert all(s in t.template for s in fam.sentinels or () if s), fam.name
        # the end-of-completion tokens are among the template's stops
        assert all(e in t.stop for e in fam.eos), fam.name


# -- prompts, token for token ---------------------------------------------------------------

def test_qwen_file_level():
    tok, det, prompt, ids = rendered_ids("qwen")
    assert ids == (sid(tok, "<|fim_prefix|>") + enc(tok, PREFIX) + sid(tok, "<|fim_suffix|>")
                   + enc(tok, SUFFIX) + sid(tok, "<|fim_middle|>"))
    assert prompt.template == "qwen@2" and "<|file_sep|>" in prompt.stop


def test_qwen_repository_level():
    # <|repo_name|>{repo}\n<|file_sep|>{path1}\n{content1}\n<|file_sep|>{path}\n<|fim_prefix|>...
    tok, _, _, ids = rendered_ids("qwen", [OTHER])
    assert ids == (sid(tok, "<|repo_name|>") + enc(tok, "pkg\n")
                   + sid(tok, "<|file_sep|>") + enc(tok, f"{OTHER.path}\n{OTHER.text}")
                   + sid(tok, "<|file_sep|>") + enc(tok, f"{PATH}\n")
                   + sid(tok, "<|fim_prefix|>") + enc(tok, PREFIX) + sid(tok, "<|fim_suffix|>")
                   + enc(tok, SUFFIX) + sid(tok, "<|fim_middle|>"))


def test_starcoder2_file_and_repository_level():
    tok, _, prompt, ids = rendered_ids("starcoder2")
    assert ids == (sid(tok, "<fim_prefix>") + enc(tok, PREFIX) + sid(tok, "<fim_suffix>")
                   + enc(tok, SUFFIX) + sid(tok, "<fim_middle>"))
    # <repo_name>reponame<file_sep>filepath0\ncode0<file_sep><fim_prefix>filepath1\ncode1_pre<fim_suffix>...
    tok, _, _, ids = rendered_ids("starcoder2", [OTHER])
    assert ids == (sid(tok, "<repo_name>") + enc(tok, "pkg")
                   + sid(tok, "<file_sep>") + enc(tok, f"{OTHER.path}\n{OTHER.text}")
                   + sid(tok, "<file_sep>") + sid(tok, "<fim_prefix>") + enc(tok, f"{PATH}\n{PREFIX}")
                   + sid(tok, "<fim_suffix>") + enc(tok, SUFFIX) + sid(tok, "<fim_middle>"))


def test_deepseek_file_and_repository_level():
    tok, _, prompt, ids = rendered_ids("deepseek")
    bos, begin, hole, end = (sid(tok, t) for t in ("<｜begin▁of▁sentence｜>", "<｜fim▁begin｜>",
                                                    "<｜fim▁hole｜>", "<｜fim▁end｜>"))
    assert ids == bos + begin + enc(tok, PREFIX) + hole + enc(tok, SUFFIX) + end
    assert prompt.template == "deepseek@2"
    # README, repository level: "#utils.py\n<code>" per file, the current file last under "#path".
    tok, _, _, ids = rendered_ids("deepseek", [OTHER])
    assert ids == bos + begin + enc(tok, f"#{OTHER.path}\n{OTHER.text}#{PATH}\n{PREFIX}") + hole + enc(tok, SUFFIX) + end


def test_starcoder_and_santacoder():
    tok, _, _, ids = rendered_ids("starcoder")
    assert ids == (sid(tok, "<fim_prefix>") + enc(tok, PREFIX) + sid(tok, "<fim_suffix>")
                   + enc(tok, SUFFIX) + sid(tok, "<fim_middle>"))
    tok, _, _, ids = rendered_ids("santacoder")
    assert ids == (sid(tok, "<fim-prefix>") + enc(tok, PREFIX) + sid(tok, "<fim-suffix>")
                   + enc(tok, SUFFIX) + sid(tok, "<fim-middle>"))


def test_codellama_matches_infilling_prompt_tokens():
    # [bos, prefix_id] + encode(pre) (SentencePiece's dummy space) + [suffix_id]
    # + encode_infilling(suf) (no dummy space) + [middle_id]
    tok, det, prompt, ids = rendered_ids("codellama")
    assert ids == (sid(tok, "<s>") + sid(tok, "▁<PRE>") + sp_ids(tok, PREFIX, True) + sid(tok, "▁<SUF>")
                   + sp_ids(tok, SUFFIX, False) + sid(tok, "▁<MID>"))
    assert det.eos_token == "▁<EOT>" and "</s>" in prompt.stop


def test_codegemma():
    tok, _, prompt, ids = rendered_ids("codegemma")
    assert ids == (sid(tok, "<bos>") + sid(tok, "<|fim_prefix|>") + sp_ids(tok, PREFIX, False)
                   + sid(tok, "<|fim_suffix|>") + sp_ids(tok, SUFFIX, False) + sid(tok, "<|fim_middle|>"))
    assert "<|file_separator|>" in prompt.stop


def test_codegen():
    # prefix + "<mask_1>" + suffix + "<|endoftext|>" + "<sep>" + "<mask_1>"; the answer ends at <eom>
    tok, _, prompt, ids = rendered_ids("codegen")
    assert ids == (enc(tok, PREFIX) + sid(tok, "<mask_1>") + enc(tok, SUFFIX) + sid(tok, "<|endoftext|>")
                   + sid(tok, "<sep>") + sid(tok, "<mask_1>"))
    assert "<eom>" in prompt.stop


def test_phi3_is_left_to_right():
    tok, det, prompt, ids = rendered_ids("phi3")
    assert not prompt.fim and ids == sp_ids(tok, PREFIX, True)


def test_repository_wrapping_counts_against_the_snippet_budget():
    tok = tokenizer_for("qwen")
    _, manifest = manifest_for("qwen", tok)
    count = lambda text: len(tok.encode(text, add_special_tokens=False).ids)  # noqa: E731
    big = Snippet("pkg/big.py", "".join(f"value_{i} = {i}\n" for i in range(200)), score=1.0, source="open_files")
    ctx = Context(prefix=PREFIX, suffix=SUFFIX, path=PATH, language="python", snippets=[big])
    manifest.context_length = 300
    prompt = build_prompt(ctx, manifest, count, 44)
    assert count(prompt.text) <= 256 and prompt.text.startswith("<|repo_name|>pkg\n<|file_sep|>pkg/big.py\n")
    assert template_for(manifest).id == "qwen@2"


def test_the_manifests_stop_tokens_join_the_templates():
    tok = tokenizer_for("starcoder")
    _, manifest = manifest_for("starcoder", tok)
    manifest.stop_tokens = ["<fim_pad>", "<|endoftext|>"]
    ctx = Context(prefix=PREFIX, suffix=SUFFIX, path=PATH, language="python")
    prompt = build_prompt(ctx, manifest, lambda t: len(t), 64)
    assert prompt.stop.count("<|endoftext|>") == 1 and prompt.stop[-1] == "<fim_pad>"
    assert load_template("starcoder").stop == tuple(prompt.stop[:-1])  # the cached template is untouched


def test_codegen_has_no_prefix_sentinel_and_can_be_chosen():
    det = detect_family(tokenizer_for("codegen").get_vocab(), "llama", override="codegen")
    assert (det.fim_prefix, det.fim_suffix, det.fim_middle, det.eos_token) == ("", "<mask_1>", "<mask_1>", "<eom>")


def test_an_older_code_llama_tokenizer_is_shipped_with_the_dummy_space_first_only():
    from tokenizers import Tokenizer as T

    from ghost_lsp.tools.modelkit.families import shipped_tokenizer

    legacy = sentencepiece(SPECIALS["codellama"], False)
    legacy.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    text = "def f(x):\n    return x  # two spaces\n"
    adapted = T.from_str(shipped_tokenizer("codellama", legacy.to_str()))
    assert enc(adapted, text) == enc(legacy, text) == sp_ids(legacy, text, True)  # plain text: unchanged
    _, manifest = manifest_for("codellama", adapted)
    ctx = Context(prefix=PREFIX, suffix=SUFFIX, path=PATH, language="python")
    prompt = build_prompt(ctx, manifest, lambda t: len(enc(adapted, t)), 64)
    expected = (sid(adapted, "<s>") + sid(adapted, "▁<PRE>") + sp_ids(adapted, PREFIX, True) + sid(adapted, "▁<SUF>")
                + sp_ids(adapted, SUFFIX, False) + sid(adapted, "▁<MID>"))
    assert enc(adapted, prompt.text) == expected != enc(legacy, prompt.text)  # the older one adds "▁"s
    assert shipped_tokenizer("codellama", adapted.to_str()) is None  # already right
    assert shipped_tokenizer("qwen", legacy.to_str()) is None  # other families ship theirs as is


@pytest.mark.parametrize("path,shown,repo", [("/home/alice/work/proj/pkg/main.py", "main.py", "pkg"),
                                             ("C:\\Users\\alice\\pkg\\main.py", "main.py", "pkg"),
                                             ("main.py", "main.py", "repo")])
def test_repository_headers_never_show_an_absolute_path(path, shown, repo):
    t = load_template("qwen")
    ctx = Context(prefix="x = ", suffix="", path=path, language="python", snippets=[OTHER])
    text = t.fill(ctx, ctx.prefix, "", t.snippet_block("python", OTHER))
    assert text.startswith(f"<|repo_name|>{repo}\n<|file_sep|>pkg/util.py\n")
    assert f"<|file_sep|>{shown}\n<|fim_prefix|>x = " in text and "alice" not in text
