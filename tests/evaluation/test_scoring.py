"""evaluation.scoring's open-set figures, on answers made up to have known AUROC and FPR."""

from __future__ import annotations

import pytest

from evaluation import scoring


def answer(
    group: str, label: int | None, top: float, reasons: tuple[str, ...] = ()
) -> scoring.Answer:
    probabilities = (top,) + ((1 - top) / 9,) * 9
    return scoring.Answer(group, "k", label, 200, None, "digit", 0, reasons, probabilities)


def test_digits_all_above_every_non_digit_give_auroc_one_and_no_false_positives():
    answers = [answer("mnist", 1, 0.9 + 0.001 * n) for n in range(20)]
    answers += [answer("non-digits", None, 0.2 + 0.01 * n) for n in range(10)]
    figures = scoring.open_set(answers, "non-digits")
    assert (figures.auroc, figures.fpr_at_95) == (1.0, 0.0)


def test_ties_count_half_and_fpr_is_taken_at_95_percent_of_the_digits():
    # 20 digits at 0.30..0.49 (0.01 apart): 95% of them score 0.31 or more.
    answers = [answer("mnist", 1, 0.30 + 0.01 * n) for n in range(20)]
    answers += [answer("held-out", None, top) for top in (0.30, 0.305, 0.31, 0.6)]
    figures = scoring.open_set(answers, "held-out")
    # Each non-digit: the share of digits above it, ties half: 19.5/20, 19/20, 18.5/20, 0.
    assert figures.auroc == pytest.approx((19.5 + 19 + 18.5 + 0) / 20 / 4)
    assert figures.fpr_at_95 == 0.5  # 0.31 and 0.6 reach 0.31


def test_a_shape_reason_or_no_digit_found_scores_as_never_stood_by():
    refused = answer("non-digits", None, 0.99, reasons=("too_little_ink",))
    blank = scoring.Answer("non-digits", "k", None, 400, "blank_image", None, None, (), ())
    assert scoring.score(refused) == 0.0 and scoring.score(blank) == 0.0
    figures = scoring.open_set([answer("mnist", 1, 0.5), refused, blank], "non-digits")
    assert (figures.auroc, figures.fpr_at_95) == (1.0, 0.0)


def test_a_group_with_no_answers_is_refused():
    with pytest.raises(ValueError, match="held-out"):
        scoring.open_set([answer("mnist", 1, 0.9)], "held-out")


def test_the_new_groups_have_their_targets():
    assert scoring.TARGETS["degraded"] == 0.97 and scoring.TARGETS["held-out"] == 0.90
