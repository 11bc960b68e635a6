"""common/rng.py: PyTorch's CPU random numbers, drawn with numpy.

Three kinds of evidence:
- the lectures' printed output (rand, multinomial, the sampled names, the GPT bigram's loss
  and sample): the numbers a learner compares with the video;
- values produced with PyTorch 2.13 during development (`torch.randint(...)` etc., run in a
  separate process, hard-coded here; no test imports torch). Where that PyTorch changed its
  recipe since the lectures (its vectorized randn), we compare within a tolerance;
- an independent scalar re-derivation: the Mersenne Twister in plain Python and PyTorch's
  Box-Muller written out element by element with the math module.
"""

import math
import pickle
from fractions import Fraction

import numpy as np
import pytest

from common import cli, data, rng

SEED = 2147483647  # the makemore lectures' generator seed


# ---------------------------------------------------------------------------------------
# An independent reference: MT19937 in plain Python, PyTorch's normal_fill_16 per element


def mt19937_words(seed, n):
    """The first n outputs of the reference genrand_int32 after init_genrand(seed)."""
    mt = [seed & 0xFFFFFFFF]
    for i in range(1, 624):
        mt.append((1812433253 * (mt[-1] ^ (mt[-1] >> 30)) + i) & 0xFFFFFFFF)
    out, index = [], 624
    while len(out) < n:
        if index == 624:
            for i in range(624):
                y = (mt[i] & 0x80000000) | (mt[(i + 1) % 624] & 0x7FFFFFFF)
                mt[i] = mt[(i + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            index = 0
        y = mt[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        out.append(y)
    return out


def f32(x):
    return float(np.float32(x))


def scalar_randn(seed, n):
    """torch.randn(n) (n >= 16) as the C++ loop computes it, one float at a time."""
    words = mt19937_words(seed, n + (16 if n % 16 else 0))
    uniform = [(w & 0xFFFFFF) / 2**24 for w in words]  # exact in float32

    def fill_16(d):
        for j in range(8):
            u1, u2 = f32(1 - d[j]), d[j + 8]
            radius = f32(math.sqrt(f32(-2 * f32(math.log(u1)))))
            theta = f32(2.0 * math.pi * u2)  # 2.0f * pi<double> * u2, stored as float
            d[j] = f32(radius * f32(math.cos(theta)))
            d[j + 8] = f32(radius * f32(math.sin(theta)))
        return d

    d = uniform[:n]
    for i in range(0, n - 15, 16):
        d[i:i + 16] = fill_16(d[i:i + 16])
    if n % 16:
        d[n - 16:] = fill_16(uniform[n:n + 16])  # 16 fresh uniforms for the tail
    return np.array(d, dtype=np.float32)


def one_at_a_time_normals(seed, n):
    """The first n doubles of at::normal_distribution<double> (torch.randn of fewer than 16
    values, one call after another): Box-Muller on two 53-bit uniforms gives r cos t, then
    the kept r sin t."""
    words = mt19937_words(seed, 2 * n + 2)
    out = []
    for i in range(0, len(words) - 3, 4):
        u1, u2 = [((hi << 32 | lo) & (2**53 - 1)) / 2**53
                  for hi, lo in (words[i:i + 2], words[i + 2:i + 4])]
        radius = math.sqrt(-2 * math.log(1 - u2))  # 1 - u2 is exact
        out += [radius * math.cos(2 * math.pi * u1), radius * math.sin(2 * math.pi * u1)]
    return out[:n]


# ---------------------------------------------------------------------------------------
# The bit stream


def test_words_are_the_reference_mersenne_twister():
    g = rng.Generator(5489)  # the reference implementation's default seed
    first = g.words(5).tolist()
    assert first == [3499211612, 581869302, 3890346734, 3586334585, 545404204]
    # C++ requires the 10000th output of a default-seeded std::mt19937 to be 4123659995
    assert g.words(9995)[-1] == 4123659995


def test_words_match_the_plain_python_twister_across_reseeds():
    for seed in (0, 42, 1337, SEED, 2**32 - 1):
        assert rng.Generator(seed).words(1300).tolist() == mt19937_words(seed, 1300)


def test_seed_keeps_the_low_32_bits_like_torch():
    # torch: manual_seed(2**32 + 5) draws like manual_seed(5); -1 like 2**32 - 1, and
    # initial_seed() reports -1 as 2**64 - 1 (all produced with torch.randint(0, 1000, (3,)))
    assert rng.Generator(2**32 + 5).randint(0, 1000, (3,)).tolist() == [411, 814, 767]
    assert rng.Generator(5).randint(0, 1000, (3,)).tolist() == [411, 814, 767]
    assert rng.Generator(-1).randint(0, 1000, (3,)).tolist() == [371, 978, 476]
    assert rng.Generator(0).randint(0, 1000, (3,)).tolist() == [44, 239, 933]
    assert rng.Generator(-1).initial_seed() == 2**64 - 1


# ---------------------------------------------------------------------------------------
# Lecture facts


def test_rand_and_multinomial_as_printed_in_the_bigram_lecture():
    g = rng.Generator(SEED)
    p = rng.rand(3, generator=g)
    assert p.dtype == np.float32
    np.testing.assert_array_equal(np.round(p, 4), np.float32([0.7081, 0.3542, 0.1054]))
    p = p / p.sum()
    np.testing.assert_array_equal(np.round(p, 4), np.float32([0.6064, 0.3033, 0.0903]))
    samples = rng.multinomial(p, num_samples=100, replacement=True, generator=g)
    lecture = ("1120021100011001100102001001000111011001110110110200000000001100000000"
               "100100000001200000010020100111")
    assert samples.dtype == np.int64 and samples.shape == (100,)
    assert "".join(map(str, samples)) == lecture


def bigram_probabilities():
    words = data.load_names()
    stoi, itos = data.names_vocab(words)
    N = np.zeros((27, 27), dtype=np.int64)
    for w in words:
        chs = ["."] + list(w) + ["."]
        for a, b in zip(chs, chs[1:]):
            N[stoi[a], stoi[b]] += 1
    P = (N + 1).astype(np.float32)
    P /= P.sum(axis=1, keepdims=True)
    return P, itos


def test_bigram_names_as_sampled_in_the_lecture():
    P, itos = bigram_probabilities()
    g = rng.Generator(SEED)
    names = []
    for _ in range(5):
        out, ix = [], 0
        while True:
            ix = int(rng.multinomial(P[ix], num_samples=1, replacement=True, generator=g)[0])
            out.append(itos[ix])
            if ix == 0:
                break
        names.append("".join(out))
    assert names == ["mor.", "axx.", "minaymoryles.", "kondlaisah.", "anchshizarie."]


def test_randn_weights_of_the_neural_bigram():
    """W = torch.randn((27, 27), generator=g): the lecture prints the probability of each
    of the 5 bigrams of '.emma.' and the loss 3.7693049907684326."""
    W = rng.randn((27, 27), generator=rng.Generator(SEED))
    assert W.dtype == np.float32 and W.shape == (27, 27)
    # During development, torch's float32 softmax of exactly this W reproduced all five
    # printed probabilities bit for bit; torch 2.13's own randn gives W[0, 1] =
    # -0.2372923195362091 and W[0, 2] = -0.027384605258703232 and matches one of five.
    assert W[0, :4].tolist() == [1.5673619508743286, -0.23729224503040314,
                                 -0.02738482877612114, -1.1007792949676514]
    assert W[1, :4].tolist() == [-0.6700623631477356, -1.2198841571807861,
                                 0.30314406752586365, -1.0725022554397583]
    xs, ys = [0, 5, 13, 13, 1], [5, 13, 13, 1, 0]
    logits = W[xs].astype(np.float64)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    lecture = [0.012286253273487091, 0.018050702288746834, 0.026691533625125885,
               0.07367684692144394, 0.0149775305762887]
    np.testing.assert_allclose(probs[range(5), ys], lecture, rtol=2e-7)
    loss = -np.log(probs[range(5), ys]).mean()
    assert abs(loss - 3.7693049907684326) < 1e-6


def test_gpt_bigram_loss_and_untrained_sample_as_in_the_lecture():
    """torch.manual_seed(1337); a batch from randint; nn.Embedding(65, 65) (normal_, 4225
    values, so the tail rule applies); 100 characters from multinomial(probs, 1)."""
    text = data.load_shakespeare()
    chars, stoi, itos = data.char_vocab(text)
    train, _ = data.train_val_split(data.encode_chars(text, stoi))
    rng.manual_seed(1337)
    ix = rng.randint(len(train) - 8, (4,))
    xb = np.stack([train[i:i + 8] for i in ix])  # (4, 8)
    yb = np.stack([train[i + 1:i + 9] for i in ix])
    assert xb[0].tolist() == [24, 43, 58, 5, 57, 1, 46, 43]
    rng.manual_seed(1337)
    table = rng.normal((65, 65))  # (vocab, vocab)
    logits = table[xb].reshape(32, 65).astype(np.float64)
    loss = np.log(np.exp(logits).sum(axis=1)) - logits[range(32), yb.ravel()]
    assert f"{loss.mean():.4f}" == "4.8786"
    idx = [0]
    for _ in range(100):
        row = table[idx[-1]][None, :]  # (1, 65)
        probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        idx.append(int(rng.multinomial(probs, num_samples=1)[0, 0]))
    sample = "".join(itos[i] for i in idx)
    assert sample == ("\nSKIcLT;AcELMoTbvZv C?nq-QE33:CJqkOKH-q;:la!oiywkHjgChzbQ?u!3bLIgwev"
                      "myFJGUGp\nwnYWmnxKWWev-tDqXErVKLgJ")


# ---------------------------------------------------------------------------------------
# Cross-checks against PyTorch 2.13 (values produced by running torch during development)


def test_randint_matches_torch():
    g = rng.Generator(SEED)
    a = rng.randint(0, 182625, (32,), generator=g)  # torch.randint(0, 182625, (32,), ...)
    assert a.dtype == np.int64 and a.shape == (32,)
    assert a[:10].tolist() == [138156, 41144, 63274, 75447, 70028, 82980, 61784, 130741,
                               108672, 74782]
    assert g.randint(-5, 7, (12,)).tolist() == [-3, 0, 4, -3, -5, -4, 5, -3, -4, 2, -4, 0]
    # a range of 2**32 or more takes two words per value
    assert g.randint(0, 2**40, (4,)).tolist() == [785460872742, 117206593323, 533747049008,
                                                  947283003938]
    # the whole int64 range: torch.randint(-2**63, 2**63 - 1, (4,)), seed 7
    assert rng.randint(-2**63, 2**63 - 1, (4,), generator=rng.Generator(7)).tolist() == [
        -7815732517915138876, 5163590386780219894, -1136149262272507693, 4122204982959224423]
    assert g.rand(6).tolist() == [0.14401602745056152, 0.5036944150924683,
                                  0.4243812561035156, 0.8138815760612488,
                                  0.22753596305847168, 0.45773279666900635]


def test_randint_high_only_and_default_generator_match_torch():
    assert rng.manual_seed(42) is rng.default_generator
    # torch.manual_seed(42); torch.randint(10, (8,))
    assert rng.randint(10, (8,)).tolist() == [2, 7, 6, 4, 6, 5, 0, 4]
    assert rng.initial_seed() == 42


# torch.randn(n, generator=g) at a few positions, then torch.rand(2, generator=g)
TORCH_RANDN = {
    16: ([0, 7, 8, 15], [1.5673619508743286, 0.6048919558525085, 0.0791362002491951,
                         2.9333672523498535], [0.7053852081298828, 0.9881922602653503]),
    27: ([0, 10, 11, 26], [1.5673619508743286, -0.4712531864643097, -0.7389135956764221,
                           -0.3476170599460602], [0.4406910538673401, 0.6007798910140991]),
    200: ([0, 183, 184, 199], [1.5673619508743286, 0.6830465197563171, -0.35451391339302063,
                               1.460539698600769], [0.14229989051818848, 0.5209113955497742]),
    729: ([0, 711, 712, 728], [1.5673619508743286, 1.3067378997802734, -0.6348179578781128,
                               0.8627285957336426], [0.8976051807403564, 0.4334879517555237]),
    6000: ([0, 2999, 5999], [1.5673619508743286, 1.1614511013031006, -0.011763975955545902],
           [0.6871285438537598, 0.12717443704605103]),
}


@pytest.mark.parametrize("n", sorted(TORCH_RANDN))
def test_randn_matches_torch_up_to_its_vectorized_rounding(n):
    """PyTorch 2.13 runs a vectorized randn (float32 angle, approximate log/sin/cos), so
    values differ from the lectures' scalar recipe by up to 1.8e-6; the words it consumes,
    and so everything drawn afterwards, are the same. Index 11 of n=27 and 184 of n=200
    lie in the redrawn tail: a wrong tail rule would be off by O(1) there."""
    idx, values, after = TORCH_RANDN[n]
    g = rng.Generator(SEED)
    x = g.randn(n)
    assert x.dtype == np.float32 and x.shape == (n,)
    np.testing.assert_allclose(x[idx], values, rtol=0, atol=2e-6)
    assert g.rand(2).tolist() == after  # exact: n + 16 words were used when n % 16 != 0


@pytest.mark.parametrize("n", [16, 27, 200, 729])
def test_randn_is_the_scalar_recipe_exactly(n):
    np.testing.assert_array_equal(rng.Generator(SEED).randn(n), scalar_randn(SEED, n))


def test_randn_tail_redraws_the_last_16():
    g = rng.Generator(SEED)
    head = g.randn(16)
    x = rng.Generator(SEED).randn(27)
    np.testing.assert_array_equal(x[:11], head[:11])  # untouched by the tail
    assert not np.array_equal(x[11:16], head[11:16])  # overwritten by the tail block


# torch.randn(15, generator=torch.Generator().manual_seed(2147483647)): fewer than 16
# values are drawn one at a time, so randn(n) for n < 16 is the first n of these, exactly
TORCH_RANDN_15 = [-0.9800073504447937, -1.6578478813171387, -0.05716622993350029,
                  -0.34085410833358765, 2.0991551876068115, 0.8963767886161804,
                  0.33790621161460876, -0.2086971253156662, -0.9390963912010193,
                  -1.1810048818588257, -0.6283889412879944, -0.9825753569602966,
                  1.3661174774169922, -0.5174228549003601, 1.1822324991226196]
# torch.rand(1) right after torch.randn(n), same seed: 4 words per pair of values
TORCH_RAND_AFTER_RANDN = {1: 0.09044414758682251, 2: 0.09044414758682251,
                          3: 0.008028924465179443, 4: 0.008028924465179443,
                          5: 0.8639929294586182, 6: 0.8639929294586182,
                          7: 0.7053852081298828, 8: 0.7053852081298828,
                          9: 0.7074304223060608, 10: 0.7074304223060608,
                          11: 0.9927970767021179, 12: 0.9927970767021179,
                          13: 0.8580995798110962, 14: 0.8580995798110962,
                          15: 0.3729363679885864}


def test_small_randn_matches_torch_bit_for_bit():
    x = rng.randn(3, generator=rng.Generator(42))
    assert x.dtype == np.float32 and x.shape == (3,)
    assert x.tolist() == [0.33669036626815796, 0.12880940735340118, 0.23446236550807953]
    assert rng.Generator(SEED).randn(15).tolist() == TORCH_RANDN_15
    assert rng.Generator(SEED).randn(2, 3).tolist() == [TORCH_RANDN_15[:3],
                                                         TORCH_RANDN_15[3:6]]
    scalar = rng.Generator(1337).randn(())  # torch.randn((), generator=...): a 0-d tensor
    assert scalar.shape == () and scalar.tolist() == -2.0259921550750732


@pytest.mark.parametrize("n", sorted(TORCH_RAND_AFTER_RANDN))
def test_small_randn_uses_the_words_torch_uses(n):
    g = rng.Generator(SEED)
    assert g.randn(n).tolist() == TORCH_RANDN_15[:n]
    assert g.rand(1).tolist() == [TORCH_RAND_AFTER_RANDN[n]]


@pytest.mark.parametrize("seed", [0, 42, 1337, SEED])
def test_small_randn_is_the_plain_python_recipe(seed):
    g = rng.Generator(seed)
    got = np.concatenate([g.randn(n) for n in (1, 2, 3, 4, 5, 7, 11, 15, 13)])  # 61 values
    np.testing.assert_array_equal(got, np.float32(one_at_a_time_normals(seed, 61)))


def test_small_randn_keeps_its_second_value_across_calls():
    """A mixed sequence, all on one generator, as torch 2.13 draws it: randn(3) leaves its
    fourth value in the generator; randn(20) (the block recipe), rand and randint do not
    touch it, and the next small randn starts with it."""
    g = rng.Generator(SEED)
    assert g.randn(3).tolist() == TORCH_RANDN_15[:3]
    x = g.randn(20)
    np.testing.assert_allclose(x[[0, 3, 4, 19]], [-0.03512968122959137, -0.9387656450271606,
                                                  1.7249202728271484, 0.3324427902698517],
                               rtol=0, atol=2e-6)  # torch 2.13's vectorized rounding
    assert g.randn(5).tolist() == [-0.34085410833358765, 0.36311909556388855,
                                   -0.9844765067100525, -1.5109074115753174,
                                   -0.6927272081375122]
    assert g.rand(4).tolist() == [0.14401602745056152, 0.5036944150924683,
                                  0.4243812561035156, 0.8138815760612488]
    assert g.randint(0, 10, (6,)).tolist() == [8, 6, 1, 0, 5, 1]
    assert g.randn(1).tolist() == [0.06902475655078888]  # kept from randn(5)
    assert g.randn(1).tolist() == [0.14515595138072968]


def test_small_randn_kept_value_is_forgotten_on_reseed_and_saved_in_the_state():
    g = rng.Generator(42)
    first = g.randn(1)
    assert g.manual_seed(42).randn(1).tolist() == first.tolist() == [0.33669036626815796]
    state = g.get_state()  # holds the kept value 0.12880940735340118
    assert state.shape == (628,) and state[625] == 1
    copy = rng.Generator(0).set_state(state)
    assert copy.randn(1).tolist() == g.randn(1).tolist() == [0.12880940735340118]
    assert copy.get_state()[625] == 0
    # a state without the kept value (625 words) starts the next pair afresh
    assert rng.Generator(0).set_state(state[:625]).randn(1).tolist() == \
        rng.Generator(42).randn(3)[2:].tolist()


def test_small_normal_is_a_multiply_add_in_double():
    """torch.empty(5).normal_(mean, std) with fewer than 16 values: r cos t * std + mean in
    double, with one rounding (the compiler fuses it), then float32."""
    g = rng.Generator(42)
    assert g.normal(5, 0.5, 0.02).tolist() == [0.5067338347434998, 0.5025761723518372,
                                               0.5046892762184143, 0.5046066641807556,
                                               0.4775428771972656]
    assert g.normal((2, 2), -1.0, 3.0).tolist() == [[-1.5589848756790161, 5.624604225158691],
                                                    [-2.9139912128448486, 0.3849716782569885]]
    # mean = -(z * std) rounded: two roundings would give exactly 0; one keeps the error
    z = one_at_a_time_normals(42, 1)[0]
    assert z == 0.33669035438385886
    mean = -(z * 0.02)
    assert rng.normal(1, mean, 0.02, generator=rng.Generator(42)).tolist() == \
        [-3.455470494733612e-19]  # torch's value
    assert rng.normal(1, mean, 0.02, generator=rng.Generator(42)).tolist() == \
        [float(np.float32(float(Fraction(z) * Fraction(0.02) + Fraction(mean))))]


def test_uniform_matches_torch_bit_for_bit():
    """torch.empty(200, 30).uniform_(-b, b, generator=g): nn.Linear(30, 200)'s bound. The
    multiply-add is rounded once; rounding twice differs in about half of the values."""
    g = rng.Generator(42)
    b = 1 / math.sqrt(30)
    u = rng.uniform((200, 30), -b, b, generator=g)
    assert u.dtype == np.float32 and u.shape == (200, 30)
    assert u.ravel()[:5].tolist() == [0.1395850032567978, 0.15153801441192627,
                                      -0.04277210682630539, 0.1677147001028061,
                                      -0.04000265523791313]
    assert u.ravel()[-3:].tolist() == [-0.1691685914993286, -0.15263472497463226,
                                       -0.18215027451515198]
    assert u.astype(np.float64).sum() == 0.539115349547501
    # torch.empty(65, 32).normal_(0.0, 0.02, generator=g), next on the same generator
    n = rng.normal((65, 32), 0.0, 0.02, generator=g)
    np.testing.assert_allclose(n.ravel()[:3], [-0.009256748482584953, 0.0029952030163258314,
                                               0.013803550973534584], rtol=0, atol=1e-7)


def test_multinomial_without_replacement_matches_torch():
    g = rng.Generator(1337)
    P = g.rand(4, 65)  # unnormalised weights, one distribution per row
    assert g.multinomial(P, 1).tolist() == [[64], [50], [37], [53]]
    assert g.multinomial(P, 5).tolist() == [[20, 31, 7, 14, 18], [63, 29, 59, 60, 41],
                                            [11, 58, 34, 21, 59], [41, 38, 9, 32, 64]]
    # torch 2.13 still uses the cumulative method for several samples with replacement
    assert g.multinomial(P, 3, replacement=True).tolist() == [[18, 59, 52], [39, 8, 26],
                                                              [58, 39, 26], [50, 16, 64]]
    p = g.rand(27)
    letters = "".join(chr(97 + int(g.multinomial(p, 1)[0])) for _ in range(60))
    assert letters == "xi{mjipxqgvmjizdkxpkcbipqr{aybbibpiaimxaoebnwrlkdz{qrvzmiaqd"


def test_multinomial_cumulative_sum_is_float32():
    # 1 + 2**-24 rounds back to 1 in float32, so the cumulative distribution is 1 from the
    # first category on and every draw is 0. (torch: 0 of 3000 draws are non-zero; with
    # the same weights as a float64 tensor, 10 are.)
    p = np.float32([1.0] + [2.0**-24] * 65536)
    draws = rng.multinomial(p, 3000, replacement=True, generator=rng.Generator(0))
    assert draws.shape == (3000,) and not draws.any()


def test_multinomial_compares_against_a_53_bit_uniform():
    # Seed 2's first uniform double is 0.9175606656465919; as a float32 it would round down
    # to c = 0.9175606369972229. With p = [c, 1 - c] the cumulative value c is below u, so
    # the draw is 1; one float32 step higher it is 0. (Same results from torch.multinomial
    # with two samples, which still takes this path in torch 2.13.)
    u0 = mt19937_words(2, 2)
    assert ((u0[0] & 0x1FFFFF) << 32 | u0[1]) * 2.0**-53 == 0.9175606656465919
    c = np.float32(0.9175606369972229)
    above = np.nextafter(c, np.float32(2))
    g = rng.Generator(2)
    assert g.multinomial(np.float32([c, 1 - c]), 2, replacement=True).tolist() == [1, 0]
    g = rng.Generator(2)
    assert g.multinomial(np.float32([above, 1 - above]), 2, True).tolist() == [0, 0]
    for p, want in [([c, 1 - c], 1), ([above, 1 - above], 0)]:  # one draw: a shorter path
        assert rng.multinomial(np.float32(p), 1, True, generator=rng.Generator(2))[0] == want


def test_multinomial_exponential_is_stored_as_float32():
    # With weights equal to the float32 values of the two exponential draws for seed 2,
    # both scores are exactly 1 in float32 and the first index wins (torch: [0]); in float64
    # the second score would be the larger.
    p = np.float32([2.495692491531372, 0.10193883627653122])
    assert rng.multinomial(p, 1, generator=rng.Generator(2)).tolist() == [0]


# ---------------------------------------------------------------------------------------
# API: shapes, dtypes, generators, state


def test_shapes_and_spellings():
    a = rng.randn(27, 27, generator=rng.Generator(7))
    np.testing.assert_array_equal(a, rng.randn((27, 27), generator=rng.Generator(7)))
    np.testing.assert_array_equal(a, rng.Generator(7).randn([27, 27]))
    assert rng.rand(2, 3, generator=rng.Generator(1)).shape == (2, 3)
    assert rng.randint(0, 5, 7, generator=rng.Generator(1)).shape == (7,)
    np.testing.assert_array_equal(rng.randint(10, size=(8,), generator=rng.Generator(1)),
                                  rng.randint(0, 10, (8,), generator=rng.Generator(1)))
    assert rng.randn(0, generator=rng.Generator(1)).shape == (0,)
    assert rng.multinomial(np.ones((2, 5)), 3, True, generator=rng.Generator(1)).shape \
        == (2, 3)
    assert rng.uniform(4, -1, 1, generator=rng.Generator(1)).dtype == np.float32
    assert rng.normal((2, 8)).dtype == np.float32


def test_generators_are_independent_and_reseedable():
    g1, g2 = rng.Generator(3), rng.Generator(3)
    first = g1.rand(5)
    g1.rand(100)
    np.testing.assert_array_equal(g2.rand(5), first)
    assert g1.manual_seed(3) is g1
    np.testing.assert_array_equal(g1.rand(5), first)
    assert rng.Generator().initial_seed() == 67280421310721  # torch.Generator()'s seed


def test_state_round_trip():
    g = rng.Generator(11)
    g.rand(1000)
    state = g.get_state()
    assert state.dtype == np.uint32 and state.shape == (628,)
    ahead = g.randn(50)
    np.testing.assert_array_equal(rng.Generator(0).set_state(state).randn(50), ahead)
    copied = pickle.loads(pickle.dumps(rng.Generator(0).set_state(state)))
    np.testing.assert_array_equal(copied.randn(50), ahead)


def test_float64_weights_are_used_as_float32():
    P64 = np.random.default_rng(0).random((3, 27))
    a = rng.multinomial(P64, 4, True, generator=rng.Generator(5))
    b = rng.multinomial(P64.astype(np.float32), 4, True, generator=rng.Generator(5))
    np.testing.assert_array_equal(a, b)


def test_multiply_add_is_rounded_once():
    # 1 + 2**-23 + 2**-24 - 2**-70: a double rounds it to a float32 halfway point, and then
    # ties-to-even would give 1 + 2**-22; the exact sum lies below, so 1 + 2**-23 is right.
    a = np.float32([1 + 2**-23])
    assert rng._fma32(a, np.float32(2**-24 * (1 - 2**-23)), np.float32(1 + 2**-23))[0] \
        == np.float32(1 + 2**-23)
    a = rng.Generator(9).rand(300)
    for b, c in [(np.float32(0.3651484), np.float32(-0.1825742)),
                 (np.float32(3.0), np.float32(2**-30))]:
        got = rng._fma32(a, b, c)
        for x, r in zip(a.tolist(), got.tolist()):
            exact = Fraction(x) * Fraction(float(b)) + Fraction(float(c))
            below, above = np.nextafter(np.float32(r), np.float32(-1)), \
                np.nextafter(np.float32(r), np.float32(2))
            assert abs(Fraction(r) - exact) <= abs(Fraction(float(below)) - exact)
            assert abs(Fraction(r) - exact) <= abs(Fraction(float(above)) - exact)


# ---------------------------------------------------------------------------------------
# Bad input: a ValueError (and a UserError, so a stage shows it as one line)


@pytest.mark.parametrize("call, message", [
    (lambda g: g.multinomial(np.float32([0.5, -0.1, 0.6]), 1), "negative"),
    (lambda g: g.multinomial(np.zeros(5), 1, True), "sum to zero"),
    (lambda g: g.multinomial(np.float32([[1, 1], [0, 0]]), 1), "sum to zero"),
    (lambda g: g.multinomial(np.float32([1, np.nan]), 1), "finite"),
    (lambda g: g.multinomial(np.float32([1, np.inf]), 1), "finite"),
    (lambda g: g.multinomial(np.ones((2, 2, 2)), 1), "1-D or 2-D"),
    (lambda g: g.multinomial(np.ones(3), 4), "without replacement"),
    (lambda g: g.multinomial(np.ones(3), 0), "positive"),
    (lambda g: g.randint(5, 5, (3,)), "low < high"),
    (lambda g: g.randint(0, 10), "needs a size"),
    (lambda g: g.randint(0, 2.5, (3,)), "whole-number"),
    (lambda g: g.randint(0, 2**63, (3,)), "int64"),
    (lambda g: g.randn(2.5), "whole numbers"),
    (lambda g: g.rand(-1), "negative"),
    (lambda g: g.uniform(3, 1.0, 0.0), "low <= high"),
    (lambda g: g.normal(20, 0.0, -1.0), "std"),
    (lambda g: g.normal(3, 0.0, -1.0), "std"),
    (lambda g: g.normal(3, float("nan")), "finite"),
    (lambda g: g.manual_seed("42"), "integer"),
    (lambda g: g.set_state(np.zeros(10, np.uint32)), "628"),
    (lambda g: rng.rand(3, generator=np.random.default_rng()), "rng.Generator"),
])
def test_bad_input_is_refused_with_a_clear_message(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call(rng.Generator(0))
    assert isinstance(info.value, cli.UserError)
    assert "\n" not in str(info.value)
