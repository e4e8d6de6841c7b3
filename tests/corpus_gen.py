"""Small synthetic multi-domain corpora the tests generate themselves."""
from __future__ import annotations

import json
import random

COMMON = ("the of and a to in is was that for it with as on be at by this had not are but from or have an "
          "they which one you were all we her she there would their will when who him been has more if no "
          "out so said what up its about into than them can only other new some could time these two may").split()
DOMAINS = {
    "cooking": ("flour butter sugar oven bake whisk simmer onion garlic pepper salt recipe dough knead "
                "saucepan skillet roast broth tomato basil oregano cinnamon yeast batter frosting grill "
                "marinade vinegar olive spatula ladle boil fry chop slice dice mince stir").split(),
    "finance": ("market stock bond yield equity dividend portfolio interest inflation credit debt asset "
                "liquidity hedge futures option broker revenue profit margin earnings capital fund bank "
                "loan mortgage currency exchange trading volatility index valuation audit tax").split(),
    "astronomy": ("star galaxy planet orbit telescope nebula comet asteroid meteor eclipse solar lunar "
                  "gravity cosmic quasar pulsar supernova redshift spectrum light year universe moon "
                  "crater satellite constellation observatory photon neutron dwarf giant cluster").split(),
}


def document(rng: random.Random, domain: str, words: int) -> str:
    vocab = DOMAINS[domain]
    return " ".join(rng.choice(vocab) if rng.random() < 0.5 else rng.choice(COMMON) for _ in range(words)).capitalize() + "."


def corpus(n: int, seed: int = 0, domains=None, min_words: int = 20, max_words: int = 60, prefix: str = "d") -> list[dict]:
    rng = random.Random(seed)
    domains = domains or list(DOMAINS)
    return [{"id": f"{prefix}{i}", "text": document(rng, d, rng.randint(min_words, max_words)), "source": d}
            for i, d in enumerate(rng.choice(domains) for _ in range(n))]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()
