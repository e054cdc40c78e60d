"""The generated pre-training corpus for the tiny base model. Deterministic from a seed, so two
builds give one base model SHA. It teaches English-like sentences, the chat format and copying
from context (names recur within a passage), but never the demo's extraction task: the base model
answers messages that contain ticket codes with generic replies, which fine-tuning then changes."""

from __future__ import annotations

import random

SYLLABLES = [
    "ka", "lo", "mi", "ra", "ve", "to", "nu", "shi", "bar", "dex", "fen", "gor", "hal", "jin", "kor",
    "lum", "mor", "nex", "pol", "qua", "rin", "sol", "tam", "vix", "wen", "yor", "zel", "bri", "cla", "dru",
]  # fmt: skip
NOUNS = [
    "cat", "dog", "river", "garden", "city", "teacher", "robot", "window", "market", "train", "letter",
    "forest", "doctor", "farmer", "engine", "bridge", "printer", "server", "invoice", "package", "laptop",
]  # fmt: skip
VERBS = [
    "saw",
    "found",
    "opened",
    "fixed",
    "visited",
    "painted",
    "carried",
    "moved",
    "checked",
    "sold",
    "built",
]
ADJECTIVES = [
    "red",
    "quiet",
    "small",
    "bright",
    "old",
    "new",
    "heavy",
    "green",
    "busy",
    "warm",
    "broken",
    "late",
]
GREETINGS = ["Hello", "Hi there", "Good morning", "Hey", "Good evening"]
GENERIC_REPLIES = [
    "Thanks for reaching out. I am happy to help with that.",
    "Sure, I can help. Could you tell me a little more?",
    "That sounds good. Let me know if anything else comes up.",
    "I understand. I will look into it and get back to you.",
    "Great question. It depends on the details of your situation.",
    "Thank you for the message. Have a nice day.",
]
# The support world's vocabulary: queues and the subjects each handles. The corpus uses these words
# with random pairings, so the base model knows them but not which queue handles what.
QUEUE_SUBJECTS: dict[str, list[str]] = {
    "billing": ["invoice", "refund", "payment", "receipt"],
    "shipping": ["package", "delivery", "parcel", "courier"],
    "technical": ["laptop", "printer", "router", "server"],
    "account": ["password", "login", "username", "profile"],
}
CODE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
CODE_DIGITS = "0123456789"
TICKET_TEMPLATES = [
    "My {adj} {noun} stopped working, the ticket code is {code} and I need help.",
    "Please check ticket {code} about the {adj} {noun}.",
    "I opened {code} yesterday because the {noun} was {adj}.",
    "Reference {code}: the {noun} {verb} nothing today.",
    "Can you update me on {code}? It is about my {noun}.",
    "The {noun} issue is filed as {code}, thanks.",
]


def pseudo_word(rng: random.Random, min_syllables: int = 2, max_syllables: int = 3) -> str:
    """A pronounceable made-up word: names the model cannot have memorized."""
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(min_syllables, max_syllables)))


def ticket_code(rng: random.Random) -> str:
    """A ticket code like `KX-4821`."""
    letters = "".join(rng.choice(CODE_LETTERS) for _ in range(2))
    digits = "".join(rng.choice(CODE_DIGITS) for _ in range(4))
    return f"{letters}-{digits}"


def ticket_message(rng: random.Random, code: str) -> str:
    """A customer message that mentions `code` somewhere in a sentence."""
    template = rng.choice(TICKET_TEMPLATES)
    return template.format(
        code=code, adj=rng.choice(ADJECTIVES), noun=rng.choice(NOUNS), verb=rng.choice(VERBS)
    )


def _sentence(rng: random.Random, name: str) -> str:
    return f"{name} {rng.choice(VERBS)} the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}."


SUPPORT_FACTS = [
    "Questions about the {subject} go to the {queue} team.",
    "The {queue} team handles every {subject} problem.",
    "If your {subject} is {adj}, write to {queue}.",
    "{queue} is the queue for the {subject}.",
]


def _support_sentence(rng: random.Random) -> str:
    """World knowledge the base model may have: which team handles which subject. Knowing it is not
    the same as answering a routing request in a conversation, which the model never sees."""
    queue = rng.choice(sorted(QUEUE_SUBJECTS))
    subject = rng.choice(QUEUE_SUBJECTS[queue])
    sentence = rng.choice(SUPPORT_FACTS).format(subject=subject, queue=queue, adj=rng.choice(ADJECTIVES))
    return sentence[0].upper() + sentence[1:]


def _passage(rng: random.Random) -> str:
    """A short story in which made-up names and codes recur: learning it needs copying from context."""
    names = [pseudo_word(rng).capitalize() for _ in range(2)]
    code = ticket_code(rng)
    parts = [_sentence(rng, rng.choice(names)) for _ in range(rng.randint(2, 4))]
    parts.insert(rng.randint(0, len(parts)), f"{names[0]} wrote {code} on the {rng.choice(NOUNS)}.")
    parts.append(f"Later {names[0]} read {code} again and smiled at {names[1]}.")
    for _ in range(2):
        parts.insert(rng.randint(0, len(parts)), _support_sentence(rng))
    return " ".join(parts)


def _chat(rng: random.Random) -> list[dict[str, str]]:
    """A generic conversation: greetings and ticket messages answered with generic replies."""
    if rng.random() < 0.5:
        user = f"{rng.choice(GREETINGS)}, {ticket_message(rng, ticket_code(rng))}"
    else:
        user = f"{rng.choice(GREETINGS)}! Tell me about the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}."
    return [{"role": "user", "content": user}, {"role": "assistant", "content": rng.choice(GENERIC_REPLIES)}]


def _handbook(rng: random.Random) -> str:
    """A page of the support handbook: several routing facts in a row."""
    return " ".join(_support_sentence(rng) for _ in range(rng.randint(3, 6)))


def corpus_documents(seed: int, count: int) -> list[str | list[dict[str, str]]]:
    """`count` documents: passages, handbook pages (str) and conversations (message lists), in a
    fixed order."""
    rng = random.Random(seed)
    documents: list[str | list[dict[str, str]]] = []
    for _ in range(count):
        draw = rng.random()
        documents.append(_passage(rng) if draw < 0.45 else _handbook(rng) if draw < 0.7 else _chat(rng))
    return documents


def tokenizer_training_text(seed: int, count: int) -> list[str]:
    """Plain text for training the BPE tokenizer (conversations flattened to their contents)."""
    texts: list[str] = []
    for document in corpus_documents(seed, count):
        if isinstance(document, str):
            texts.append(document)
        else:
            texts.extend(message["content"] for message in document)
    return texts
