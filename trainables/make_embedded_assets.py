"""Regenerate the embedded default's shipped assets: the question/response data and the tokenizer.

    python -m trainables.make_embedded_assets

The outputs are committed under configs/embedded/; nothing at run or test time calls this.
The data is synthetic and templated on purpose: a tiny random model can learn its structure
within a minute of CPU time, so the sweep has something real to find.
"""

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "configs" / "embedded"
SEED = 0
VOCAB_SIZE = 768

# Mistral-Instruct style: the prompt ends at [/INST], so the prompt's ids are a prefix of the
# full conversation's ids and the validators' prompt masking lines up.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Canada": "Ottawa", "Mexico": "Mexico City", "Peru": "Lima", "Chile": "Santiago", "Norway": "Oslo",
    "Sweden": "Stockholm", "Finland": "Helsinki", "Poland": "Warsaw", "Greece": "Athens",
    "Austria": "Vienna", "Ireland": "Dublin", "Russia": "Moscow", "Turkey": "Ankara",
    "Australia": "Canberra", "Argentina": "Buenos Aires", "Brazil": "Brasilia", "Cuba": "Havana",
    "Thailand": "Bangkok", "Vietnam": "Hanoi", "Iran": "Tehran", "Iraq": "Baghdad",
    "Denmark": "Copenhagen", "Belgium": "Brussels", "Hungary": "Budapest", "Ghana": "Accra",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "up": "down", "light": "dark", "happy": "sad",
    "early": "late", "high": "low", "open": "closed", "full": "empty", "hard": "soft", "old": "new",
    "strong": "weak", "rich": "poor", "loud": "quiet", "wet": "dry", "long": "short", "near": "far",
    "thick": "thin", "clean": "dirty", "heavy": "light", "true": "false", "left": "right",
}
SOUNDS = {
    "dog": "woof", "cat": "meow", "cow": "moo", "duck": "quack", "sheep": "baa", "owl": "hoot",
    "lion": "roar", "pig": "oink", "horse": "neigh", "frog": "ribbit", "snake": "hiss", "bee": "buzz",
}
COLORS = {
    "banana": "yellow", "lemon": "yellow", "grass": "green", "leaf": "green", "sky": "blue",
    "ocean": "blue", "tomato": "red", "cherry": "red", "snow": "white", "cloud": "white",
    "coal": "black", "crow": "black", "orange": "orange", "carrot": "orange", "plum": "purple",
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                "eighteen", "nineteen", "twenty"]


def generate_pairs(rng: random.Random) -> list[dict]:
    pairs = []
    for country, capital in CAPITALS.items():
        pairs.append((f"What is the capital of {country}?", f"The capital of {country} is {capital}."))
        pairs.append((f"Which city is the capital of {country}?", f"{capital} is the capital of {country}."))
    for word, opposite in OPPOSITES.items():
        pairs.append((f"What is the opposite of {word}?", f"The opposite of {word} is {opposite}."))
    for animal, sound in SOUNDS.items():
        pairs.append((f"What sound does a {animal} make?", f"A {animal} says {sound}."))
    for thing, color in COLORS.items():
        pairs.append((f"What color is a {thing}?", f"A {thing} is usually {color}."))
    for i, day in enumerate(DAYS):
        pairs.append((f"What day comes after {day}?", f"The day after {day} is {DAYS[(i + 1) % 7]}."))
        pairs.append((f"What day comes before {day}?", f"The day before {day} is {DAYS[(i - 1) % 7]}."))
    sums = [(a, b) for a in range(11) for b in range(11)]
    for a, b in rng.sample(sums, 120):
        pairs.append((f"What is {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]}?",
                      f"{NUMBER_WORDS[a].capitalize()} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]}."))
    for n in range(20):
        pairs.append((f"What number comes after {NUMBER_WORDS[n]}?",
                      f"The number after {NUMBER_WORDS[n]} is {NUMBER_WORDS[n + 1]}."))
    for n in range(1, 21):
        pairs.append((f"Count to {NUMBER_WORDS[min(n, 10)]}.",
                      " ".join(w.capitalize() if i == 0 else w for i, w in enumerate(NUMBER_WORDS[1:min(n, 10) + 1])) + "."))
    unique = sorted(set(pairs))
    rng.shuffle(unique)
    return [{"question": q, "response": r} for q, r in unique]


def train_tokenizer(texts: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def write_tokenizer(tokenizer: Tokenizer, folder: Path) -> None:
    """Write the two files every transformers release reads the same way.

    `save_pretrained` of recent transformers names a tokenizer class older releases lack and
    moves the chat template into a separate file they never download; written by hand, the
    chat template stays inside tokenizer_config.json and the class is one all releases know.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "model_max_length": 2048,
        "add_bos_token": False, "add_eos_token": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    rng = random.Random(SEED)
    pairs = generate_pairs(rng)
    EMBEDDED_DIR.mkdir(parents=True, exist_ok=True)
    with open(EMBEDDED_DIR / "data.jsonl", "w") as f:
        for pair in pairs:
            f.write(json.dumps(pair) + "\n")
    tokenizer = train_tokenizer([p["question"] + " " + p["response"] for p in pairs])
    write_tokenizer(tokenizer, EMBEDDED_DIR / "tokenizer")
    print(f"{len(pairs)} pairs, vocabulary of {tokenizer.get_vocab_size()} tokens, written to {EMBEDDED_DIR}")


if __name__ == "__main__":
    main()
