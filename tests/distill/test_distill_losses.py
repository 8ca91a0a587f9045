"""Each distillation loss against a computation done by hand on a 2-sample, 3-class batch."""
import math

import pytest
import torch

from ghostnetv3.distill.losses import TeacherOutput, kd_loss, teacher_probs, total_loss

S = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
T_LOGITS = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])


def softmax(row, temp=1.0):
    e = [math.exp(v / temp) for v in row]
    return [v / sum(e) for v in e]


def hand_soft_ce(temp):
    total = 0.0
    for s, t in zip(S.tolist(), T_LOGITS.tolist()):
        p, q = softmax(t, temp), softmax(s, temp)
        total += -sum(pi * math.log(qi) for pi, qi in zip(p, q))
    return total / 2 * temp * temp


def hand_kl(temp):
    total = 0.0
    for s, t in zip(S.tolist(), T_LOGITS.tolist()):
        p, q = softmax(t, temp), softmax(s, temp)
        total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    return total / 2 * temp * temp


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_soft_ce_and_kl_match_hand_computation(temp):
    assert kd_loss(S, T_LOGITS, "soft-ce", temp).item() == pytest.approx(hand_soft_ce(temp), rel=1e-5)
    assert kd_loss(S, T_LOGITS, "kl", temp).item() == pytest.approx(hand_kl(temp), rel=1e-5)


def test_soft_ce_at_t1_is_the_reference_form():
    ref = torch.sum(-torch.softmax(T_LOGITS, -1) * torch.log_softmax(S, -1), dim=-1).mean()
    assert kd_loss(S, T_LOGITS, "soft-ce", 1.0).item() == pytest.approx(ref.item(), rel=1e-6)


def test_hard_uses_teacher_argmax_as_label():
    # teacher argmax: class 1, class 0
    q0, q1 = softmax(S[0].tolist()), softmax(S[1].tolist())
    hand = -(math.log(q0[1]) + math.log(q1[0])) / 2
    assert kd_loss(S, T_LOGITS, "hard", 7.0).item() == pytest.approx(hand, rel=1e-6)


def test_kl_and_soft_ce_have_equal_gradients():
    g = []
    for kind in ("kl", "soft-ce"):
        s = S.clone().requires_grad_(True)
        kd_loss(s, T_LOGITS, kind, 3.0).backward()
        g.append(s.grad)
    torch.testing.assert_close(g[0], g[1])


def test_total_is_weighted_sum_with_label_smoothing():
    labels = torch.tensor([2, 2])
    eps, w_ce, w_kd = 0.1, 0.3, 2.0
    hand_ce = 0.0
    for s, y in zip(S.tolist(), labels.tolist()):
        logq = [math.log(v) for v in softmax(s)]
        target = [eps / 3 + (1 - eps) * (i == y) for i in range(3)]
        hand_ce += -sum(a * b for a, b in zip(target, logq))
    hand_ce /= 2
    total, parts = total_loss(S, labels, T_LOGITS, kind="kl", temperature=2.0, kd_weight=w_kd,
                              ce_weight=w_ce, smoothing=eps)
    assert parts["ce"].item() == pytest.approx(hand_ce, rel=1e-5)
    assert parts["kd"].item() == pytest.approx(hand_kl(2.0), rel=1e-5)
    assert total.item() == pytest.approx(w_ce * hand_ce + w_kd * hand_kl(2.0), rel=1e-5)


def test_topk_form_rebuilds_the_distribution():
    logits = torch.tensor([[0.0, 3.0, 1.0, -1.0, 0.5]])
    p = torch.softmax(logits, -1)
    top, idx = p.topk(5)
    full = TeacherOutput(probs=top, index=idx, rest=torch.zeros(1), num_classes=5)
    for temp in (1.0, 3.0):  # all classes stored: exact at any temperature
        torch.testing.assert_close(teacher_probs(full, temp), torch.softmax(logits / temp, -1))
    top, idx = p.topk(2)
    part = TeacherOutput(probs=top, index=idx, rest=1 - top.sum(-1), num_classes=5)
    dense = teacher_probs(part)[0]
    torch.testing.assert_close(dense[idx[0]], top[0])       # stored classes exact at T = 1
    rest = (1 - top.sum()) / 3                                # the others share the rest evenly
    torch.testing.assert_close(dense[[0, 3, 4]], rest.expand(3))
    assert part.argmax().tolist() == [1]


def test_unknown_kind_and_class_mismatch_are_clear_errors():
    with pytest.raises(ValueError, match="not one of"):
        kd_loss(S, T_LOGITS, "mse")
    with pytest.raises(ValueError, match="teacher gives 4 classes, student 3"):
        kd_loss(S, torch.zeros(2, 4))
