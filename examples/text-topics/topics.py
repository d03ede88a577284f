"""A text classification task made offline — short sentences about one of four topics — and a small BERT for it.

What a user's data module looks like: it returns ``torch.utils.data.Dataset``s whose samples are ``(inputs, label)``,
the inputs a dict of the model's keyword arguments (``input_ids``, ``attention_mask``), padded to one length so that
batches stack. The tokenizer is built here (no download), or read from a save_pretrained directory (``path``)."""

from __future__ import annotations

import random

import torch
from torch.utils.data import Dataset

TOPICS = {
    "sport": "match goal team coach league season striker keeper referee score stadium cup trophy",
    "weather": "rain storm cloud sunny forecast wind snow cold warm humid thunder fog breeze",
    "money": "bank stock price market loan profit budget tax coin invest debt salary fund",
    "science": "atom cell laser planet theory experiment lab physics gene orbit molecule data robot",
}
FILLER = ("the a this that today yesterday we they people said really very about after before with without new old "
          "big small good bad more less many some every and but then also still just only again here there").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def vocabulary() -> list[str]:
    """Every token the tokenizer knows: the special tokens, then the words (the example's vocab.txt)."""
    return SPECIAL + FILLER + [w for words in TOPICS.values() for w in words.split()]


def sentences(n: int, seed: int, filler: tuple[int, int] = (4, 12)) -> list[tuple[str, int]]:
    """``n`` sentences with their topic's index: filler words, ``k`` (2 to 4) words of the topic, and up to ``k - 1``
    words of each of one or two other topics. The topic is the one named most often: it has to be counted, since no
    single word decides."""
    rng = random.Random(seed)
    topics = [t.split() for t in TOPICS.values()]
    out = []
    for _ in range(n):
        label = rng.randrange(len(topics))
        k = rng.randint(2, 4)
        tokens = [rng.choice(FILLER) for _ in range(rng.randint(*filler))]
        words = [rng.choice(topics[label]) for _ in range(k)]
        for other in rng.sample([i for i in range(len(topics)) if i != label], rng.randint(1, 2)):
            words += [rng.choice(topics[other]) for _ in range(rng.randint(0, k - 1))]
        for word in words:
            tokens.insert(rng.randrange(len(tokens) + 1), word)
        out.append((" ".join(tokens), label))
    return out


class Sentences(Dataset):
    """Sentences tokenised on read, padded (or cut) to ``length`` tokens."""

    classes = list(TOPICS)

    def __init__(self, samples: list[tuple[str, int]], tokenizer, length: int) -> None:
        self.samples, self.tokenizer, self.length = samples, tokenizer, length

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        text, label = self.samples[i]
        enc = self.tokenizer(text, padding="max_length", truncation=True, max_length=self.length, return_tensors="pt")
        return {"input_ids": enc["input_ids"][0], "attention_mask": enc["attention_mask"][0]}, label


def datasets(path: str | None = None, train: int = 2000, test: int = 500, length: int = 24, seed: int = 0):
    """(train, test) of the topic task, tokenised by the tokenizer saved in ``path`` (a save_pretrained directory),
    or by :func:`tokenizer` built here when no path is given."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True) if path else tokenizer()
    return (Sentences(sentences(train, seed), tok, length), Sentences(sentences(test, seed + 1), tok, length))


def bert(hidden: int = 64, layers: int = 2, heads: int = 4, intermediate: int = 256, positions: int = 128):
    """A small BERT classifier for the task, built from its config with random weights (the train stage trains it)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=len(vocabulary()), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=positions,
                        num_labels=len(TOPICS))
    return BertForSequenceClassification(config)


def tokenizer(directory: str | None = None):
    """A BERT word-piece tokenizer over :func:`vocabulary` (no download), saved into ``directory`` when given."""
    from transformers import BertTokenizer

    tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocabulary())}, do_lower_case=True)
    if directory:
        tok.save_pretrained(directory)
    return tok


def save_pretrained(directory: str, seed: int = 0, **kwargs) -> None:
    """:func:`bert`, randomly initialised, saved with its tokenizer into ``directory`` as a user saves theirs with
    save_pretrained (for ``model.arch: hf``)."""
    torch.manual_seed(seed)
    bert(**kwargs).save_pretrained(directory)
    tokenizer(directory)
