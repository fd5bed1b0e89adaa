"""Write a tiny llama GGUF over a real vocabulary, then check it generates.

Usage (with the e2e venv's interpreter, which has gguf, numpy, llama_cpp):

    python e2e/tiny_model.py VOCAB.gguf OUT.gguf

VOCAB is one of llama.cpp's vocabulary-only GGUF files (SentencePiece,
``tokenizer.ggml.model = llama``). OUT is a 2-layer llama of width 64 with
random weights from a fixed seed: it loads in a fraction of a second and
runs real llama.cpp forward passes, producing meaningless text.

Only ordinary text tokens can ever be sampled. A random model would
otherwise pick byte tokens (``<0xE2>`` ...) whose bytes form invalid UTF-8,
and llama-cpp-python's streaming loop spins at full CPU on those; it would
also pick ``</s>``, which makes answer lengths unpredictable. The mask is a
bias built into the weights, since llama has no output bias: dimension 0 of
every token embedding is a constant that no layer writes to (row 0 of each
residual projection is zero), so after the final norm it is a positive
number at every position, and the output row of every excluded token has a
large negative weight on it and zeros elsewhere.

The model is written to ``OUT.partial`` and renamed once it has generated,
so a half-written or broken file never looks provisioned.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np

SEED = 20240607
N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_FF = 256
# What llama.cpp is told it was trained for; the server's --n_ctx picks the
# context actually allocated.
TRAIN_CONTEXT = 8192

# The constant in dimension 0 of each embedding, and the weight excluded
# tokens put on it. After the final RMS norm that dimension is 1.5 to 2, so
# an excluded token's logit is below -1500 while allowed logits stay within
# about 7 of 0 (measured): no temperature a client sends makes one likely.
BIAS_CHANNEL = 2.0
EXCLUDED_WEIGHT = -1000.0

# Scale of the random weights: embeddings about unit size, projections small
# so the residual stream (and hence the bias channel's share) stays steady,
# output rows sized for logits spread over a few units, so sampling varies.
EMBED_STD = 1.0
PROJ_STD = 0.05
OUTPUT_STD = 0.2

TOKEN_NORMAL = int(gguf.TokenType.NORMAL)


@dataclasses.dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos: int
    eos: int
    unk: int
    pre: str


def read_vocab(path: Path) -> Vocab:
    fields = gguf.GGUFReader(path).fields

    def value(key: str) -> Any:
        return fields[f"tokenizer.ggml.{key}"].contents()

    if value("model") != "llama":
        raise SystemExit(f"{path}: not a SentencePiece (llama) vocabulary")
    return Vocab(
        tokens=value("tokens"),
        scores=value("scores"),
        types=value("token_type"),
        bos=value("bos_token_id"),
        eos=value("eos_token_id"),
        unk=value("unknown_token_id"),
        pre=value("pre"),
    )


def allowed_tokens(tokens: list[str], types: list[int]) -> np.ndarray:
    """Mask of the tokens the model may emit: plain text, no control chars."""
    return np.array(
        [
            kind == TOKEN_NORMAL and not any(ord(c) < 32 or ord(c) == 127 for c in text)
            for text, kind in zip(tokens, types, strict=True)
        ]
    )


def random_weights(n_vocab: int, allowed: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    ones = np.ones(N_EMBD, dtype=np.float32)
    embed = normal((n_vocab, N_EMBD), EMBED_STD)
    embed[:, 0] = BIAS_CHANNEL
    output = normal((n_vocab, N_EMBD), OUTPUT_STD)
    output[:, 0] = 0.0
    output[~allowed] = 0.0
    output[~allowed, 0] = EXCLUDED_WEIGHT

    # Shapes are numpy's (out, in); gguf stores them reversed, as ggml wants.
    weights = {
        "token_embd.weight": embed,
        "output_norm.weight": ones,
        "output.weight": output,
    }
    for layer in range(N_LAYER):
        attn_out = normal((N_EMBD, N_EMBD), PROJ_STD)
        ffn_down = normal((N_EMBD, N_FF), PROJ_STD)
        attn_out[0] = 0.0  # keep the bias channel constant
        ffn_down[0] = 0.0
        block = {
            "attn_norm.weight": ones,
            "attn_q.weight": normal((N_EMBD, N_EMBD), PROJ_STD),
            "attn_k.weight": normal((N_EMBD, N_EMBD), PROJ_STD),
            "attn_v.weight": normal((N_EMBD, N_EMBD), PROJ_STD),
            "attn_output.weight": attn_out,
            "ffn_norm.weight": ones,
            "ffn_gate.weight": normal((N_FF, N_EMBD), PROJ_STD),
            "ffn_up.weight": normal((N_FF, N_EMBD), PROJ_STD),
            "ffn_down.weight": ffn_down,
        }
        weights.update({f"blk.{layer}.{name}": t for name, t in block.items()})
    return weights


def write_model(vocab: Vocab, path: Path) -> np.ndarray:
    """Write the model to ``path``; return the mask of allowed tokens."""
    tokens = vocab.tokens
    allowed = allowed_tokens(tokens, vocab.types)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("rph-e2e-tiny")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(TRAIN_CONTEXT)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_bos_token_id(vocab.bos)
    writer.add_eos_token_id(vocab.eos)
    writer.add_unk_token_id(vocab.unk)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    for name, tensor in random_weights(len(tokens), allowed).items():
        writer.add_tensor(name, tensor)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return allowed


def check_generates(path: Path, allowed: np.ndarray) -> None:
    """Load the model with llama.cpp and sample; exit if a banned token shows."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=256, seed=SEED, verbose=False)
    for temperature in (0.0, 0.8, 2.0):
        prompt = llm.tokenize(b"Hello, tiny model.")
        produced: list[int] = []
        for token in llm.generate(prompt, temp=temperature):
            produced.append(token)
            if len(produced) == 32:
                break
        banned = [t for t in produced if not allowed[t]]
        if banned:
            raise SystemExit(f"the model emitted excluded tokens {banned}")
        text = llm.detokenize(produced).decode()
        print(f"temperature {temperature}: {text!r}")
        llm.reset()


def main() -> None:
    vocab_path, out_path = (Path(arg) for arg in sys.argv[1:3])
    partial = out_path.with_name(out_path.name + ".partial")
    partial.unlink(missing_ok=True)
    allowed = write_model(read_vocab(vocab_path), partial)
    print(
        f"wrote {partial}: {partial.stat().st_size} bytes, "
        f"{int(allowed.sum())} of {allowed.size} tokens allowed"
    )
    check_generates(partial, allowed)
    partial.replace(out_path)


if __name__ == "__main__":
    main()
