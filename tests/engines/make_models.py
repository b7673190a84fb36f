#!/usr/bin/env python3
"""Write the tiny reasoning models the real-engine tests serve.

No model hub is reachable here, so the models are made locally:

* a byte-level BPE tokenizer trained with `tokenizers` on a fixed corpus, with
  Qwen3's special tokens and `<think>` / `</think>` as added (non-special)
  tokens, and Qwen3's chat template (`qwen3.jinja` beside this file);
* a 2-layer Qwen3 model (`qwen3/`, safetensors, for vLLM) and the same model
  as GGUF (`qwen3.gguf`, for llama.cpp server).

Random weights would produce junk, so the weights make the output a fixed
chain instead: every layer's output projections are zero (the residual stream
is the token's embedding), each chain token's embedding is a large multiple of
its own basis vector, and the `lm_head` row of the next chain token points
along it. The next token therefore depends on the last token only, and the
model emits, at any temperature,

    <think> thaa thab ... (THINK words)</think>\\n\\n ansaa ... (ANSWER words)<|im_end|>

Every token that is not in the chain (the last prompt token `\\n` of
`<|im_start|>assistant\\n`, say) leads to `<think>`; a prompt that ends with
`</think>` or `\\n\\n` (a closed thinking, a continuation) goes straight to the
answer. `qwen3-loop/` and `qwen3-loop.gguf` never close thinking by themselves
(the last thinking word leads back to the first): their thinking length is set
by an engine's thinking budget or `max_tokens`.

Usage: make_models.py OUT_DIR   (deterministic: same files every time)
"""

import json
import os
import sys
from pathlib import Path

import numpy as np

THINK = 40
ANSWER = 12
HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 32  # vLLM's CPU attention takes 32, 64, ...
FFN = 128
CTX = 4096
MARGIN = 60.0  # logit of the chain's next token; every other logit is 0

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
# Qwen2/Qwen3's pre-tokenizer (llama.cpp's "qwen2"): digits split one by one,
# so chain words are letters only.
PRETOKENIZE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def word(prefix: str, i: int) -> str:
    return " " + prefix + chr(ord("a") + i // 26) + chr(ord("a") + i % 26)


THINK_WORDS = [word("th", i) for i in range(THINK)]
ANSWER_WORDS = [word("ans", i) for i in range(ANSWER)]


def corpus():
    text = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is two plus two? Please think step by step.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n" + "".join(THINK_WORDS) + "\n</think>\n\n"
        + "".join(ANSWER_WORDS) + "<|im_end|>\n"
        "The quick brown fox jumps over the lazy dog. Hello world, hi there!\n"
    )
    return [text] * 50 + ["".join(THINK_WORDS), "".join(ANSWER_WORDS), "\n\n"] * 50


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    from tokenizers import AddedToken

    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED])
    return tok


def chain(tok, loop: bool):
    """Token ids of the chain and the successor of each chain token."""

    def one(s):
        ids = tok.encode(s, add_special_tokens=False).ids
        if len(ids) != 1:
            raise SystemExit(f"{s!r} is not one token: {ids}")
        return ids[0]

    think_open, think_close = one("<think>"), one("</think>")
    nn = one("\n\n")
    thinks = [one(w) for w in THINK_WORDS]
    answers = [one(w) for w in ANSWER_WORDS]
    eos = one("<|im_end|>")
    seq = [think_open] + thinks + [think_close, nn] + answers + [eos]
    nxt = {a: b for a, b in zip(seq, seq[1:])}
    if loop:
        nxt[thinks[-1]] = thinks[0]
    return seq, nxt, think_open, eos


def weights(vocab: int, seq, nxt, start):
    """Per-token direction and the lm_head: returns (embed, lm_head)."""
    rng = np.random.default_rng(7)
    direction = {}
    for t in seq[:-1]:  # the end token needs no successor
        direction[t] = len(direction) + 1
    assert len(direction) < HIDDEN
    embed = np.zeros((vocab, HIDDEN), dtype=np.float32)
    embed[:, 0] = 1.0  # every other token: direction 0, which leads to `<think>`
    for t, d in direction.items():
        embed[t] = 0.0
        embed[t, d] = 1.0
    embed += rng.normal(0, 1e-4, embed.shape).astype(np.float32)
    # RMSNorm(e_d) = sqrt(HIDDEN) * e_d, so this row scale gives MARGIN.
    scale = MARGIN / np.sqrt(HIDDEN)
    head = np.zeros((vocab, HIDDEN), dtype=np.float32)
    head[start, 0] = scale
    for t, d in direction.items():
        head[nxt[t], d] = scale
    return embed, head


def layer_tensors(rng):
    """One decoder layer's tensors (HF names, relative), outputs zeroed."""
    q = HEADS * HEAD_DIM
    kv = KV_HEADS * HEAD_DIM

    def small(*shape):
        return rng.normal(0, 0.02, shape).astype(np.float32)

    return {
        "input_layernorm.weight": np.ones(HIDDEN, np.float32),
        "post_attention_layernorm.weight": np.ones(HIDDEN, np.float32),
        "self_attn.q_proj.weight": small(q, HIDDEN),
        "self_attn.k_proj.weight": small(kv, HIDDEN),
        "self_attn.v_proj.weight": small(kv, HIDDEN),
        "self_attn.o_proj.weight": np.zeros((HIDDEN, q), np.float32),
        "self_attn.q_norm.weight": np.ones(HEAD_DIM, np.float32),
        "self_attn.k_norm.weight": np.ones(HEAD_DIM, np.float32),
        "mlp.gate_proj.weight": small(FFN, HIDDEN),
        "mlp.up_proj.weight": small(FFN, HIDDEN),
        "mlp.down_proj.weight": np.zeros((HIDDEN, FFN), np.float32),
    }


def write_hf(out: Path, tok, template: str, vocab: int, embed, head, eos, bos):
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    tensors = {"model.embed_tokens.weight": embed, "model.norm.weight": np.ones(HIDDEN, np.float32), "lm_head.weight": head}
    for i in range(LAYERS):
        for k, v in layer_tensors(rng).items():
            tensors[f"model.layers.{i}.{k}"] = v
    save_file(
        {k: torch.from_numpy(np.ascontiguousarray(v)).to(torch.bfloat16) for k, v in tensors.items()},
        str(out / "model.safetensors"),
        metadata={"format": "pt"},
    )
    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": vocab,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": CTX,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "dtype": "bfloat16",
        "bos_token_id": bos,
        "eos_token_id": eos,
        "use_cache": True,
        "sliding_window": None,
        "use_sliding_window": False,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": bos, "eos_token_id": [eos, bos], "do_sample": True}, indent=2) + "\n"
    )
    tok.save(str(out / "tokenizer.json"))
    added = {}
    for t in SPECIAL + ADDED:
        i = tok.token_to_id(t)
        added[str(i)] = {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": t in SPECIAL,
        }
    tcfg = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": CTX,
        "split_special_tokens": False,
        "chat_template": template,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, indent=2) + "\n"
    )


def write_gguf(path: Path, tok, template: str, vocab: int, embed, head, eos, bos):
    import gguf

    w = gguf.GGUFWriter(str(path), "qwen3")
    w.add_name("thinkgate tiny qwen3")
    w.add_context_length(CTX)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    # Tokenizer: GPT-2 style BPE with the qwen2 pre-tokenizer.
    inv = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    tokens = [inv[i] for i in range(vocab)]
    types = []
    for t in tokens:
        if t in SPECIAL:
            types.append(gguf.TokenType.CONTROL)
        elif t in ADDED:
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    model = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(eos)
    w.add_bos_token_id(bos)
    w.add_pad_token_id(bos)
    w.add_add_bos_token(False)
    w.add_chat_template(template)
    rng = np.random.default_rng(11)
    w.add_tensor("token_embd.weight", embed)
    w.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))
    w.add_tensor("output.weight", head)
    names = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "self_attn.q_norm.weight": "attn_q_norm.weight",
        "self_attn.k_norm.weight": "attn_k_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for i in range(LAYERS):
        for k, v in layer_tensors(rng).items():
            w.add_tensor(f"blk.{i}.{names[k]}", v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    template = (Path(__file__).parent / "qwen3.jinja").read_text()
    tok = build_tokenizer()
    vocab = tok.get_vocab_size(with_added_tokens=True)
    bos = tok.token_to_id("<|endoftext|>")
    manifest = {"think_words": THINK_WORDS, "answer_words": ANSWER_WORDS, "vocab": vocab}
    for name, loop in [("qwen3", False), ("qwen3-loop", True)]:
        seq, nxt, start, eos = chain(tok, loop)
        embed, head = weights(vocab, seq, nxt, start)
        write_hf(out / name, tok, template, vocab, embed, head, eos, bos)
        write_gguf(out / f"{name}.gguf", tok, template, vocab, embed, head, eos, bos)
    (out / "chain.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"models written to {out}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
