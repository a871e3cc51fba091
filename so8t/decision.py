"""The ALLOW / ESCALATE / DENY decision prompt, defined once.

Training (``{"text","label"}`` records) teaches the model to answer this prompt with the label;
calibration reads the label logits after the very same prompt. Both import it from here.
"""

from __future__ import annotations

#: The three decisions, in the order used for every score vector, probability and matrix.
LABELS: tuple[str, str, str] = ("ALLOW", "ESCALATE", "DENY")

#: System message of the decision prompt.
DECISION_SYSTEM = (
    "You are a safety reviewer. Classify the user's request with exactly one word: "
    "ALLOW (safe to answer), ESCALATE (needs a human reviewer), or DENY (must be refused)."
)

#: User-turn template; ``{text}`` is the request under review.
DECISION_USER_TEMPLATE = "Request:\n{text}\n\nDecision (ALLOW, ESCALATE or DENY):"


def decision_messages(text: str) -> list[dict[str, str]]:
    """Chat messages of the decision prompt for one request.

    Args:
        text: The request to classify.

    Returns:
        ``[system, user]`` messages; the assistant's answer is the label.
    """
    return [
        {"role": "system", "content": DECISION_SYSTEM},
        {"role": "user", "content": DECISION_USER_TEMPLATE.format(text=text)},
    ]
