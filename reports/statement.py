"""The plain-language statement of what a run protects, from whom, and what not.

Written for a privacy officer, not a cryptographer: one bullet per guarantee or
gap, each naming what is protected and against whom, with this run's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.reports.load import HEInfo
from fedsim.reports.privacy import ACCOUNTANT_NAMES
from fedsim.reports.render import Block, Bullets, Paragraph


@dataclass(frozen=True, kw_only=True)
class PrivacyFacts:
    """The settings and ledger figures the statement quotes."""

    dp: bool
    he: HEInfo
    epsilon_max: float | None
    epsilon_median: float | None
    clients_trained: int
    clients_total: int | None
    deltas: tuple[float, ...]
    accountant: str | None
    noise_multiplier: float | None
    max_grad_norm: float | None
    budget: float | None
    exhausted: int
    target_epsilon: float | None
    insecure_noise: bool = False
    """--insecure-reproducible-noise: the server can recompute and remove the noise."""
    sites: dict | None = None
    """How the clients' own ledgers compare (reports.privacy.site_agreement)."""
    model: str | None = None


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "unknown" if value is None else format(value, spec)


def _value(prefix: str, value: float | None) -> str:
    """`prefix` and the value, or nothing when the value is unknown."""
    return "" if value is None else f"{prefix} {_fmt(value)}"


def _delta_text(deltas: tuple[float, ...]) -> str:
    """δ as one value, or its range when it differs between clients."""
    if len(deltas) > 1:
        return (f"δ from {_fmt(min(deltas))} to {_fmt(max(deltas))} "
                "depending on the client")
    return f"δ = {_fmt(deltas[0] if deltas else None)}"


def _population(facts: PrivacyFacts) -> str:
    """Over whom the median is taken."""
    if facts.clients_total is None:
        return f"the {facts.clients_trained} clients that trained"
    return (f"all {facts.clients_total} clients, {facts.clients_trained} of which "
            "trained; the others spent ε = 0")


def _dp_strength(facts: PrivacyFacts) -> str:
    """Write the (ε, δ) sentence, from the ledger when there is one."""
    accountant = ACCOUNTANT_NAMES.get(facts.accountant or "", facts.accountant or "an")
    if facts.epsilon_max is None:
        target = (f" (the configuration asked for ε = {_fmt(facts.target_epsilon)})"
                  if facts.target_epsilon is not None else "")
        return ("How strongly: unknown, because the privacy ledger holds no record"
                f"{target}.")
    return (f"How strongly: (ε, δ)-differential privacy with ε = "
            f"{_fmt(facts.epsilon_max, '.4g')} for the most exposed client (median "
            f"{_fmt(facts.epsilon_median, '.4g')} over {_population(facts)}) and "
            f"{_delta_text(facts.deltas)}, computed by the "
            f"{accountant} accountant (values from privacy/ledger.jsonl, the server's "
            "record of every update it received, used or not)."
            f"{_sites_text(facts.sites)} Smaller ε is stronger: about 1 or below is "
            "strong, 10 or more is weak.")


def _sites_text(sites: dict | None) -> str:
    """Say whether the clients' own ledgers agree with the server's."""
    if sites is None:
        return (" Each client also keeps its own ledger at its site; this run folder "
                "does not hold them.")
    if sites["agree"]:
        return (f" The clients' own ledgers ({sites['source']}/, written by each "
                "client before its reply left it) give the same final ε for every "
                "client.")
    worst = max(sites["differing"], key=lambda d: d["site_epsilon"])
    return (f" {len(sites['differing'])} client(s)' own ledgers ({sites['source']}/) "
            "give a different final ε, up to "
            f"{_fmt(worst['site_epsilon'], '.4g')} for client {worst['client_id']} "
            f"(the server's: {_fmt(worst['server_epsilon'], '.4g')}); a client's own "
            "ledger also counts releases the server never received (a lost reply), "
            "so where it is higher, it is the true figure.")


NO_DP_AGAINST_SERVER = "no DP against the server"


def _insecure_noise(facts: PrivacyFacts) -> list[str]:
    """What a run with --insecure-reproducible-noise protects: nothing from the server."""
    return [
        f"Nothing, against the server: {NO_DP_AGAINST_SERVER}. This run used "
        "--insecure-reproducible-noise: every client's noise and Poisson batches "
        "derive from the run seed, the round and the client id, which the server "
        "knows, so it can recompute the noise and subtract it from each update, "
        "and it knows which examples each batch held. The same holds for anyone "
        "who learns the seed (it is in config.json) and sees an update, including "
        "other clients under HE. The ε below is what the noise would give if it "
        "were secret; it is not a guarantee for this run.",
        _dp_strength(facts),
    ]


def _dp_protected(facts: PrivacyFacts) -> list[str]:
    """List what sample-level DP protects in this run."""
    if facts.insecure_noise:
        return _insecure_noise(facts)
    items = [
        "Each single training example of every client, against anyone who sees "
        "that client's updates or the global model: the server, the other clients "
        "and anyone who uses the trained model. This is sample-level differential "
        "privacy (DP-SGD with Opacus): each example's gradient is clipped"
        f"{_value(' to norm', facts.max_grad_norm)} and Gaussian noise"
        f"{_value(' with multiplier', facts.noise_multiplier)} is added before an "
        "update leaves the client. The noise and the Poisson batches come from a "
        "key each client draws from its own OS entropy for each round: the server "
        "never knows them.",
        _dp_strength(facts),
    ]
    if facts.budget is not None:
        budget = _fmt(facts.budget, ".4g")
        spent = ("no client exhausted it during the run." if not facts.exhausted else
                 f"{facts.exhausted} client(s) exhausted it during the run and "
                 "trained no more.")
        items.append(f"Each client had a privacy budget of ε = {budget}; {spent}")
    return items


def _he_protected(he: HEInfo) -> str:
    """Say what secure aggregation with HE protects in this run."""
    params = f", parameter set '{he.params}'" if he.params else ""
    fingerprint = (f" Public-context fingerprint ({he.fingerprint_source}): "
                   f"{he.fingerprint}."
                   if he.fingerprint else "")
    return ("Each client's individual update, against the server (secure aggregation "
            f"with homomorphic encryption, TenSEAL CKKS{params}): clients encrypt "
            "their updates under a key the server does not hold, the server only adds "
            "ciphertexts and sees no individual update, only the encrypted sum; it "
            "cannot read the global model either. Against a malicious server, clients "
            "decrypt and use a global only if its secret tags show it is one round's "
            "sum of distinct clients' contributions (not forged, shifted, scaled, "
            "replayed or a single client's update)." + fingerprint)


def _not_protected(facts: PrivacyFacts) -> list[str]:
    """List the gaps a reader must know about, given what was on."""
    items: list[str] = []
    if not facts.dp:
        items.append("Training data, against anyone who sees an update or the model: "
                      "DP was off, so the updates and the global model can leak "
                      "clients' training examples (membership inference, "
                      "reconstruction from gradients) to the server, other clients "
                      "and users of the model.")
    else:
        items.append("Participation: DP here protects single examples, not whole "
                     "clients (it is not client-level DP); it does not hide that a "
                     "client took part, nor what most of a client's data has in "
                     "common (its label mix, its style).")
        items.extend(_releases(facts))
    if not facts.he.on:
        items.append("Individual updates, against the server: secure aggregation "
                     "was off, so the server sees each client's update in the clear.")
    else:
        items.append("Collusion: HE does not protect against clients colluding with "
                     "the key holder, or the server colluding with any client; every "
                     "client holds the secret key and can decrypt an update it gets "
                     "hold of.")
        items.append("Which clients are summed: a malicious server may drop "
                     "contributions; with two contributors each learns the other's "
                     "update (sites raise he-min-contributors to bound this).")
        items.append("Simulation: one machine holds every key (the run folder's he/ "
                     "holds client.key and its passphrase beside server.ctx), so the "
                     "separation between server and clients is real only in a "
                     "deployment.")
    decrypted = " (after decrypting it)" if facts.he.on else ""
    items.append("What clients see: every participating client receives the global "
                 f"model in the clear{decrypted}"
                 + ("; DP bounds what it reveals about any one example of another "
                    "client." if facts.dp else
                    "; without DP it can reveal other clients' training data."))
    return items


def _releases(facts: PrivacyFacts) -> list[str]:
    """What DP clients send outside the accounting, by name (privacy/releases.py)."""
    from fedsim.privacy.releases import OFF_UNDER_DP, releases

    items = [f"Released outside DP, {r.name}: {r.what}" for r in releases(model=facts.model)]
    items.append("Not sent under DP at all: " + "; ".join(OFF_UNDER_DP) + ".")
    return items


def protection_blocks(facts: PrivacyFacts) -> tuple[Block, ...]:
    """Build the 'what is protected, and from whom' section's blocks."""
    protected = _dp_protected(facts) if facts.dp else []
    if facts.he.on:
        protected.append(_he_protected(facts.he))
    blocks: list[Block] = [Paragraph(text="Protected in this run:")]
    if protected:
        blocks.append(Bullets(items=tuple(protected)))
    else:
        blocks.append(Paragraph(text="Nothing beyond ordinary access control: "
                                     "differential privacy and secure aggregation "
                                     "were both off."))
    blocks.append(Paragraph(text="Not protected:"))
    blocks.append(Bullets(items=tuple(_not_protected(facts))))
    return tuple(blocks)
