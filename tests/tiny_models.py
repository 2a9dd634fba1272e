"""Offline builders for tiny local models: random weights, a real byte-level BPE, saved like a hub repo."""

from __future__ import annotations

import json
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_ZH = ["你好", "世界", "数字人", "今天天气很好", "如何应对压力", "寻求支持和放松", "并采取积极的措施解决问题",
       "我们一起学习", "人工智能", "语音合成", "大语言模型", "请用少于二十五个字回答", "深圳大学", "伶荔"]
_EN = ["hello", "world", "digital human", "the weather is nice", "how to handle stress",
       "language model", "speech synthesis", "answer briefly", "streaming tokens", "Bot", "User"]


def corpus(lines: int = 300) -> list[str]:
    """A few hundred deterministic lines of mixed Chinese and English text."""
    out = []
    for i in range(lines):
        zh = "，".join(_ZH[(i * k + k) % len(_ZH)] for k in range(1, 4))
        en = " ".join(_EN[(i * k + 2 * k) % len(_EN)] for k in range(1, 4))
        out.append(f"{zh}。{en}. User: {_ZH[i % len(_ZH)]} Bot: {_EN[i % len(_EN)]} {i}")
    return out


def build_tokenizer(vocab_size: int = 1000, chat_template: str | None = CHATML_TEMPLATE):
    """A byte-level BPE trained on `corpus()`, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>" if chat_template else "<|endoftext|>",
                                  pad_token="<|endoftext|>", bos_token="<|endoftext|>")
    if chat_template:
        tok.chat_template = chat_template
    return tok


def build_sentencepiece_style_tokenizer(vocab_size: int = 800):
    """A Llama-2-style tokenizer (as Linly's): "▁" word prefixes, byte fallback, one leading space stripped."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    bpe.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False)
    bpe.train_from_iterator(corpus(), trainer)
    data = json.loads(bpe.to_str())     # byte tokens are ordinary vocabulary, as in Llama's tokenizer
    vocab = data["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def build_llama(directory: str | Path, chat_template: str | None = CHATML_TEMPLATE, seed: int = 0,
                max_positions: int = 512) -> Path:
    """Save a 2-layer random Llama (hidden 32) and its tokenizer to `directory`; returns the path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    tok = build_tokenizer(chat_template=chat_template)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():   # random weights: a zero EOS logit is rarely the largest, so replies have length
        model.lm_head.weight[tok.eos_token_id].fill_(0.0)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def build_remote_code_dir(directory: str | Path) -> Path:
    """A repo whose config.json needs remote code: an `auto_map` and a model_type transformers lacks."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "tiny_remote_lm",
        "architectures": ["TinyRemoteForCausalLM"],
        "auto_map": {"AutoConfig": "modeling_tiny_remote.TinyRemoteConfig",
                     "AutoModelForCausalLM": "modeling_tiny_remote.TinyRemoteForCausalLM"},
        "hidden_size": 32, "num_hidden_layers": 2, "vocab_size": 300,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (directory / "modeling_tiny_remote.py").write_text(
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n\n"
        "class TinyRemoteConfig(LlamaConfig):\n    model_type = 'tiny_remote_lm'\n\n\n"
        "class TinyRemoteForCausalLM(LlamaForCausalLM):\n    config_class = TinyRemoteConfig\n",
        encoding="utf-8")
    return directory


def local_provider(model_dir: str | Path, name: str = "tiny", **kw):
    """A local provider for a tiny model directory, on the CPU; `kw` are more ProviderConfig fields."""
    from configs import ProviderConfig
    from llm.providers.local import LocalProvider

    return LocalProvider(ProviderConfig(name, "local", str(model_dir), device="cpu", **kw))


def build_meaning_embedder(directory: str | Path, meanings: dict[str, str], dims: int = 16) -> Path:
    """A sentence-transformers-style BERT folder whose embedding is the mean of its characters' meaning
    vectors: every character in one string of `meanings` gets that meaning's direction (with a little of
    its own), so two texts of the same meaning are near even when they share no character. Real model code
    runs: its layers are zeroed so each token's output is its (normalized) input embedding."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chars = sorted({ch for text in meanings.values() for ch in text})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (directory / "vocab.txt").write_text("\n".join(specials + chars) + "\n", encoding="utf-8")
    tok = BertTokenizerFast.from_pretrained(directory)   # (transformers 5 ignores vocab_file= here)
    config = BertConfig(vocab_size=len(specials) + len(chars), hidden_size=dims, num_hidden_layers=1,
                        num_attention_heads=1, intermediate_size=dims, max_position_embeddings=128)
    model = BertModel(config, add_pooling_layer=False).eval()
    generator = torch.Generator().manual_seed(0)
    directions = {name: torch.randn(dims, generator=generator) for name in meanings}
    with torch.no_grad():
        for param in model.encoder.parameters():
            param.zero_()
        for layer in model.encoder.layer:   # LayerNorm(0 + x) passes the normalized input on
            for norm in (layer.attention.output.LayerNorm, layer.output.LayerNorm):
                norm.weight.fill_(1.0)
        model.embeddings.position_embeddings.weight.zero_()
        model.embeddings.token_type_embeddings.weight.zero_()
        words = model.embeddings.word_embeddings.weight
        words.zero_()
        for name, text in meanings.items():
            for ch in text:
                words[tok.convert_tokens_to_ids(ch)] = directions[name] + 0.1 * torch.randn(
                    dims, generator=generator)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": dims, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}))
    return directory
