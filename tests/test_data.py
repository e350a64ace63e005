import random
from collections import Counter

import pytest
import torch

import data
from conftest import addition_only

PAPER_EXAMPLE = """Input:
1234+567
Target:
<scratch>
[1,2,3,4] + [5,6,7] , A=[] , C=0 , 4+7+0=11 , A->1 , C->1
[1,2,3] + [5,6] , A=[1] , C=1 , 3+6+1=10 , A->0 , C->1
[1,2] + [5] , A=[0,1] , C=1 , 2+5+1=8 , A->8 , C->0
[1] + [] , A=[8,0,1] , C=0 , 1+0+0=1 , A->1 , C->0
[] + [] , A=[1,8,0,1] C=0 , END
</scratch>
1 8 0 1
"""


@addition_only
def test_paper_example_character_for_character():
    assert data.prompt((1234, 567)) + data.scratchpad(1234, 567) == PAPER_EXAMPLE


@addition_only
def test_scratchpad_starts_and_ends_as_specified():
    s = data.scratchpad(5, 7)
    assert s.startswith("\n<scratch>\n[5] + [7] , A=[] , C=0 , 5+7+0=12 , A->2 , C->1\n")
    assert s.endswith("[] + [] , A=[2] C=1 , END\n</scratch>\n1 2\n")


@addition_only
def test_final_carry_becomes_leading_digit():
    s = data.scratchpad(99, 1)
    assert "[9] + [] , A=[0] , C=1 , 9+0+1=10 , A->0 , C->1\n" in s
    assert s.endswith("[] + [] , A=[0,0] C=1 , END\n</scratch>\n1 0 0\n")


@addition_only
def test_zeros_and_second_operand_longer():
    s = data.scratchpad(0, 1000)
    assert s.splitlines()[2] == "[0] + [1,0,0,0] , A=[] , C=0 , 0+0+0=0 , A->0 , C->0"
    assert s.splitlines()[3] == "[] + [1,0,0] , A=[0] , C=0 , 0+0+0=0 , A->0 , C->0"
    assert s.endswith("A=[1,0,0,0] C=0 , END\n</scratch>\n1 0 0 0\n")
    assert data.scratchpad(0, 0).endswith("[] + [] , A=[0] C=0 , END\n</scratch>\n0\n")


@addition_only
def test_only_last_line_lacks_separator_before_carry():
    lines = data.scratchpad(987654, 12345).splitlines()[2:-2]
    assert all(" , C=" in line for line in lines[:-1])
    assert " , C=" not in lines[-1] and " C=" in lines[-1]


@pytest.mark.parametrize("seed", range(3))
@addition_only
def test_answer_of_random_problems_is_their_sum(seed):
    rng = random.Random(seed)
    for _ in range(200):
        a, b = data.operand(rng.randint(1, 12), rng), data.operand(rng.randint(1, 12), rng)
        s = data.scratchpad(a, b)
        assert data.parse_answer(s) == a + b
        assert data.reward((a, b), s) == 1.0
        assert data.reward((a, b + 1), s) == 0.0
        # the scratchpad has one line per digit of the longer operand, plus the END line
        assert s.count("\n") == 2 + max(len(str(a)), len(str(b))) + 1 + 2


@pytest.mark.parametrize("text", [
    "", "garbage", "</scratch>", "</scratch>\n", "</scratch>\n1 8 0", "</scratch>\n1 8 0 1",  # truncated
    "</scratch>\n18 0 1\n", "</scratch>\n1  8 0 1\n", "</scratch>\n 1 8 0 1\n", "</scratch>\n1 8 0 1 \n",
    "</scratch>\n0 1\n", "</scratch>\n1 a\n", "</scratch>\n\n", "</scratch> 1\n", "\x00\x00",
    "</scratch>\n-1\n",
])
def test_parse_answer_rejects_malformed_lines(text):
    assert data.parse_answer(text) is None


def test_parse_answer_accepts_exact_lines_and_never_raises():
    assert data.parse_answer("junk</scratch>\n1 8 0 1\nmore") == 1801
    assert data.parse_answer("</scratch>\n0\n") == 0
    rng = random.Random(0)
    alphabet = data.VOCAB + "xyz\t"
    for _ in range(2000):
        data.parse_answer("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))))
    assert data.parse_answer(None) is None
    assert data.parse_answer(b"</scratch>\n1\n") is None


def test_encode_decode_round_trip():
    text = data.prompt((90817, 6)) + data.scratchpad(90817, 6)
    ids = data.encode(text)
    assert len(ids) == len(text)  # one character, one token
    assert data.decode(ids) == text
    assert data.PAD_ID not in ids
    assert data.decode([data.PAD_ID] + ids + [data.PAD_ID]) == text


def test_unknown_character_gives_clear_error():
    with pytest.raises(ValueError, match="'x' is not in the vocabulary"):
        data.encode("1+x")


def test_operand_ranges():
    rng = random.Random(0)
    assert {data.operand(1, rng) for _ in range(500)} == set(range(10))
    for d in (2, 5, 9):
        values = [data.operand(d, rng) for _ in range(500)]
        assert all(len(str(v)) == d for v in values)
    with pytest.raises(ValueError):
        data.operand(0, rng)


def test_pretrain_lengths_are_balanced():
    rng = random.Random(0)
    counts = Counter()
    for _ in range(7000):
        a, b = data.pretrain_problem(7, rng)
        counts[len(str(a))] += 1
        counts[len(str(b))] += 1
    assert set(counts) == set(range(1, 8))
    assert all(abs(c - 2000) < 200 for c in counts.values())


def test_rl_distribution_matches_the_paper():
    rng = random.Random(0)
    n, k = 7, 2
    others = Counter()
    for _ in range(4000):
        a, b = data.rl_problem(n, k, rng)
        la, lb = len(str(a)), len(str(b))
        assert max(la, lb) == n + k  # one operand has exactly N+k digits
        others[la if lb == n + k else lb] += 1
    longer = sum(c for length, c in others.items() if length > n)
    assert abs(longer / 4000 - 0.5) < 0.05  # the other is longer than N half of the time (or ties at N+k)
    assert set(others) == set(range(1, n + k + 1))


def test_eval_sets_are_deterministic_held_out_and_never_trained_on():
    s1 = data.eval_set("identical", 7, 300)
    assert s1 == data.eval_set("identical", 7, 300)
    assert s1 != data.eval_set("identical", 7, 300, seed=99)
    assert all(len(str(a)) == len(str(b)) == 7 for a, b in s1)
    varying = data.eval_set("varying", 6, 300)
    assert all(len(str(a)) == 6 and len(str(b)) <= 6 for a, b in varying)
    assert len({len(str(b)) for _, b in varying}) == 6
    rl_set = data.eval_set("rl", 1, 100, n=7)
    assert all(max(len(str(a)), len(str(b))) == 8 for a, b in rl_set)
    for kind in ("identical", "varying", "pretrain"):
        assert all(data.is_held_out(a, b) for a, b in data.eval_set(kind, 4, 200))
    rng = random.Random(0)
    assert not any(data.is_held_out(*data.pretrain_problem(3, rng)) for _ in range(3000))
    assert not any(data.is_held_out(*data.rl_problem(3, 1, rng)) for _ in range(3000))
    with pytest.raises(ValueError):
        data.eval_set("nonsense", 3, 10)


def test_validation_set_is_disjoint_from_the_evaluation_set():
    # 2+1-digit problems: few enough that two seeds' draws collide unless excluded
    test = data.eval_set("rl", 1, 100, n=1)
    assert set(test) & set(data.eval_set("rl", 1, 100, seed=7, n=1))  # the collision is real here
    val = data.eval_set("rl", 1, 100, seed=7, n=1, exclude=test)
    assert len(val) == 100 and not set(val) & set(test)
    assert all(data.is_held_out(a, b) for a, b in val)


def test_batch_loss_mask_covers_the_completion_only():
    problems = [(1234, 567), (5, 7), (99, 1)]
    x, y = data.make_batch(problems)
    assert x.shape == y.shape
    for i, (a, b) in enumerate(problems):
        p, c = data.prompt((a, b)), data.scratchpad(a, b)
        kept = y[i][y[i] != -1].tolist()
        assert data.decode(kept) == c  # exactly the completion is predicted
        first = (y[i] != -1).nonzero()[0].item()
        assert first == len(p) - 1  # predicted from the last prompt character on
        assert data.decode(x[i, :first + 1].tolist()) == p
        # inputs are the sequence shifted: x[t + 1] == y[t] wherever both are real
        real = (y[i, :-1] != -1) & (x[i, 1:] != data.PAD_ID)
        assert torch.equal(x[i, 1:][real], y[i, :-1][real])
    assert (x[1] == data.PAD_ID).sum() > 0  # the short row is padded ...
    assert (y[1][x[1] == data.PAD_ID] == -1).all()  # ... and padding is never a target


def test_prompt_batch_is_left_padded():
    x = data.prompt_batch([(1234, 567), (5, 7)])
    assert data.decode(x[0].tolist()) == data.prompt((1234, 567))
    assert data.decode(x[1].tolist()) == data.prompt((5, 7))
    assert x[1, 0] == data.PAD_ID and x[1, -1] != data.PAD_ID


@addition_only
def test_first_error_finds_where_a_completion_leaves_the_scratchpad():
    right = data.scratchpad(57, 68)
    assert data.first_error((57, 68), right) is None
    assert data.first_error((57, 68), right + "junk") is None  # what follows the answer does not count
    i = right.index("A->")
    assert data.first_error((57, 68), right[:i] + "B" + right[i + 1:]) == i
    assert data.first_error((57, 68), right[:10]) == 10  # stopped early
