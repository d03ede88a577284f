"""A text classification task made offline: short sentences about one of four topics, tokenised by the tokenizer
saved beside the model (``path``: the save_pretrained directory). What a user's data module looks like: it returns
``torch.utils.data.Dataset``s whose samples are ``(inputs, label)``, the inputs a dict of the model's keyword
arguments (``input_ids``, ``attention_mask``), padded to one length so that batches stack."""

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


def sentences(n: int, seed: int, words: tuple[int, int] = (6, 16), mixed: float = 0.35) -> list[tuple[str, int]]:
    """``n`` sentences with their topic's index: filler words and 2-3 words of the topic, and with probability
    ``mixed`` one word of another topic (so that one word does not decide)."""
    rng = random.Random(seed)
    topics = [t.split() for t in TOPICS.values()]
    out = []
    for _ in range(n):
        label = rng.randrange(len(topics))
        tokens = [rng.choice(FILLER) for _ in range(rng.randint(*words))]
        for _ in range(rng.randint(2, 3)):
            tokens.insert(rng.randrange(len(tokens) + 1), rng.choice(topics[label]))
        if rng.random() < mixed:
            other = rng.choice([i for i in range(len(topics)) if i != label])
            tokens.insert(rng.randrange(len(tokens) + 1), rng.choice(topics[other]))
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


def datasets(path: str, train: int = 2000, test: int = 500, length: int = 24, seed: int = 0):
    """(train, test) of the topic task, tokenised by the tokenizer saved in ``path``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return (Sentences(sentences(train, seed), tokenizer, length),
            Sentences(sentences(test, seed + 1), tokenizer, length))


def tokenizer(directory: str):
    """A BERT word-piece tokenizer over :func:`vocabulary`, saved into ``directory`` (no download)."""
    from transformers import BertTokenizer

    tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocabulary())}, do_lower_case=True)
    tok.save_pretrained(directory)
    return tok


def encoder(directory: str, hidden: int = 64, layers: int = 2, heads: int = 4, intermediate: int = 256,
            seed: int = 0) -> None:
    """A small BERT classifier for the task, randomly initialised, saved with its tokenizer into ``directory``
    (as a user would save theirs with save_pretrained)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocabulary()), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=64,
                        num_labels=len(TOPICS))
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer(directory)
