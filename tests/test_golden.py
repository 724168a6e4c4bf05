"""Golden values: every native stepper (and the torchsde steps the stepping layer drives) on one fixed problem and
seed, compared with the numbers it gave when these anchors were recorded.

These are regression anchors, not correctness checks (the statistical, order and exact-solution tests are those):
they catch a refactor that silently changes what a sampler computes.  Every case solves a 2-D Gaussian mixture
with its exact score in float64, from fixed prior samples, and records the NFE, the step counts and a few
numbers of the result.  Options that a planned change of defaults would move (the multistep methods' final
order, Restart's schedule, the adaptive methods' first step and growth limit) are pinned explicitly, so that the
anchors follow the method, not its defaults.

A deliberate change of a method regenerates them: ``python tests/test_golden.py`` prints the table below.
"""

import math

import pytest
import torch

import sdekit
from sdekit.validation import GaussianMixture

_MULTI = {"lower_order_final": False}
_RESTART = {"sigma_min": 0.1, "sigma_max": 2.0, "restart_steps": 3, "restarts": 1, "s_noise": 1.0}
_RK = {"safety": 0.9, "fac_min": 0.2, "fac_max": 10.0}

#: (case id, sde, process kind, method, solve keyword arguments)
CASES = [
    ("ddim-vp", "vp", "ode", "ddim", dict(steps=6)),
    ("ddim-eta-vp", "vp", "sde", "ddim", dict(steps=6, options={"eta": 1.0})),
    ("dpm_solver_2-vp", "vp", "ode", "dpm_solver_2", dict(steps=4)),
    ("dpm_solver_3-ve", "ve", "ode", "dpm_solver_3", dict(steps=3)),
    ("dpm_solver_fast-vp", "vp", "ode", "dpm_solver_fast", dict(steps=10)),
    ("dpmpp_2s-vp", "vp", "ode", "dpmpp_2s", dict(steps=4)),
    ("dpmpp_2m-vp", "vp", "ode", "dpmpp_2m", dict(steps=6, options=_MULTI)),
    ("dpmpp_2m-ve-karras", "ve", "ode", "dpmpp_2m", dict(steps=6, schedule="karras", options=_MULTI)),
    ("dpmpp_3m-vp", "vp", "ode", "dpmpp_3m", dict(steps=6, options=_MULTI)),
    ("dpmpp_3m-single-vp", "vp", "ode", "dpmpp_3m", dict(steps=6, options={**_MULTI, "warmup": "singlestep"})),
    ("unipc-vp", "vp", "ode", "unipc", dict(steps=6, options=_MULTI)),
    ("unipc-bh1-ve", "ve", "ode", "unipc", dict(steps=6, options={**_MULTI, "variant": "bh1"})),
    ("edm_heun-ve", "ve", "ode", "edm_heun", dict(steps=5)),
    ("edm_heun-vp", "vp", "ode", "edm_heun", dict(steps=5)),
    ("lms-ve", "ve", "ode", "lms", dict(steps=8)),
    ("ipndm-ve", "ve", "ode", "ipndm", dict(steps=8)),
    ("deis-vp", "vp", "ode", "deis", dict(steps=8, options=_MULTI)),
    ("euler_ancestral-ve", "ve", "sde", "euler_ancestral", dict(steps=6, seed=3)),
    ("dpmpp_2m_sde-vp", "vp", "sde", "dpmpp_2m_sde", dict(steps=6, seed=3)),
    ("dpmpp_2m_sde-heun-ve", "ve", "sde", "dpmpp_2m_sde", dict(steps=6, seed=3, options={"solver_type": "heun"})),
    ("dpmpp_sde-vp", "vp", "sde", "dpmpp_sde", dict(steps=5, seed=3)),
    ("edm_stochastic-ve", "ve", "sde", "edm_stochastic", dict(steps=6, seed=3)),
    ("restart-ve", "ve", "sde", "restart", dict(steps=6, seed=3, options=_RESTART)),
    ("pc-vp", "vp", "sde", "pc", dict(steps=6, seed=3)),
    ("pc-ald-ve", "ve", "sde", "pc", dict(steps=6, seed=3, options={"corrector": "annealed_langevin"})),
    ("ddim-denoise-vp", "vp", "ode", "ddim", dict(steps=6, options={"denoise": True})),
    ("ddim-save-vp", "vp", "ode", "ddim", dict(steps=6, save_at=[0.5, 0.25])),
    ("bosh3-vp", "vp", "ode", "sdekit.bosh3", dict(rtol=1e-4, atol=1e-4, dt=0.05, options=_RK)),
    ("dopri5-ve", "ve", "ode", "sdekit.dopri5", dict(rtol=1e-5, atol=1e-5, dt=0.05, options=_RK)),
    ("dopri5-shared-vp", "vp", "ode", "sdekit.dopri5", dict(rtol=1e-4, atol=1e-4, dt=0.05, per_sample=False,
                                                             options=_RK)),
    ("dopri5-save-vp", "vp", "ode", "sdekit.dopri5", dict(rtol=1e-4, atol=1e-4, dt=0.05, save_at=[0.5],
                                                           options={**_RK, "denoise": True})),
    ("dpm_adaptive-ve", "ve", "ode", "dpm_adaptive", dict(dt=0.01, options={"fac_max": math.inf})),
    ("dpm_adaptive-o2-vp", "vp", "ode", "dpm_adaptive", dict(dt=0.01, options={"fac_max": math.inf, "order": 2})),
    ("improved_euler-vp", "vp", "sde", "improved_euler", dict(rtol=0.1, atol=0.1, seed=3, elementwise=True,
                                                              options={"h_init": 0.05, "fac_max": 3.0})),
    ("improved_euler-ode-ve", "ve", "ode", "improved_euler", dict(dt=0.01, options={"h_init": 0.01,
                                                                                     "fac_max": math.inf})),
    ("torchsde.euler-vp", "vp", "sde", "torchsde.euler", dict(steps=6, seed=3)),
    ("torchsde.milstein-vp", "vp", "sde", "torchsde.milstein", dict(steps=6, seed=3)),
    ("torchsde.heun-ve", "ve", "sde", "torchsde.heun", dict(steps=6, seed=3)),
    ("torchsde.euler-adaptive-vp", "vp", "sde", "torchsde.euler", dict(rtol=0.1, atol=0.1, seed=3,
                                                                       elementwise=True)),
    ("torchsde.milstein-adaptive-ve", "ve", "sde", "torchsde.milstein", dict(rtol=0.1, atol=0.1, seed=3,
                                                                             elementwise=True)),
]


def _problem(which):
    sde = sdekit.VPSDE() if which == "vp" else sdekit.VESDE(0.01, 20.0)
    data = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0, 0.5], [1.2, -0.4]]),
                           torch.tensor([[[0.1, 0.02], [0.02, 0.05]], [[0.06, -0.01], [-0.01, 0.08]]]), sde)
    x = data.sample(6, sde.T, generator=torch.Generator().manual_seed(11))
    return sde, data, x


def _elementwise_score(sde, mean=(0.5, -0.5), var=0.05):
    r"""The exact score of data :math:`N(m, vI)`, :math:`-(x - \alpha m)/(\alpha^2 v + \sigma^2)`, in elementwise
    operations only.

    An adaptive SDE solve is chaotic in the last bits of its score: a step's end moves by an ulp, the keyed path is
    read at another time, and the accepted steps differ from there on (a relative 1e-15 change of the mixture's
    score changed the step count).  The mixture's score and samples go through LAPACK and BLAS, whose kernels differ
    between CPU models; this score and ``randn`` starts do not, and their anchors are the same under torch's AVX2
    and AVX-512 kernels (``ATEN_CPU_CAPABILITY``; only its scalar ``default`` build moves them).
    """
    m = torch.tensor(mean, dtype=torch.float64)

    def score(x, t):
        log_alpha, sigma = sde.log_alpha_sigma(t)
        alpha = torch.exp(log_alpha)[:, None]
        return -(x - alpha * m) / (alpha * alpha * var + sigma[:, None] ** 2)
    return score


def run_case(which, kind, method, kwargs):
    """The anchored numbers of one case: NFE, steps, rejected steps, and six numbers of the result."""
    sde, data, x = _problem(which)
    kwargs = dict(kwargs)
    score = data.score
    if kwargs.pop("elementwise", False):
        score = _elementwise_score(sde)
        _, sigma_T = sde.log_alpha_sigma(torch.tensor([sde.T], dtype=torch.float64))
        x = sigma_T * torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    process = sdekit.reverse(sde, score) if kind == "sde" else sdekit.probability_flow(sde, score)
    if kind == "sde" and "seed" not in kwargs:
        kwargs["seed"] = 3
    sol = process.solve(x, method=method, **kwargs)
    numbers = sol.x[:2].flatten().tolist() + sol.x.mean(0).tolist()
    if sol.path is not None:
        numbers += sol.path[:, 0].flatten().tolist()
    return {"nfe": sol.nfe, "steps": sol.steps, "rejected": sol.rejected, "x": numbers}


GOLDEN = {
    'ddim-vp': {'nfe': 6, 'steps': 6, 'rejected': 0, 'x': [0.9804408537427206, -0.34311956200748506, 1.1422503260348005, -0.4925060295289931, 0.8018647109301201, -0.2925331815634065]},
    'ddim-eta-vp': {'nfe': 6, 'steps': 6, 'rejected': 0, 'x': [0.9320031667998602, -0.2657913677748359, 1.1237892149995459, -0.18821159550115923, 0.2192122161323514, 0.036991364044657526]},
    'dpm_solver_2-vp': {'nfe': 8, 'steps': 4, 'rejected': 0, 'x': [1.597764592001734, -0.6995398781478213, 1.2969050243930098, -0.8686686754660004, 0.8805266962276024, -0.4870523554391721]},
    'dpm_solver_3-ve': {'nfe': 9, 'steps': 3, 'rejected': 0, 'x': [0.6968554083865368, -0.34151345479133255, 0.9124548512786693, -0.6042462211402464, 0.6179598800607322, -0.35985999639668487]},
    'dpm_solver_fast-vp': {'nfe': 10, 'steps': 4, 'rejected': 0, 'x': [0.6606287780665335, -0.3134213652092792, 1.0239544418581625, -0.6184006343834517, 0.6755099188161721, -0.3644615338475164]},
    'dpmpp_2s-vp': {'nfe': 8, 'steps': 4, 'rejected': 0, 'x': [0.9302483900210703, -0.36818972893642676, 1.0891760641831745, -0.5744045313007367, 0.752294254402304, -0.3266166282995436]},
    'dpmpp_2m-vp': {'nfe': 6, 'steps': 6, 'rejected': 0, 'x': [0.9548016297680932, -0.3878357539357791, 1.2067504057580707, -0.6761595305473806, 0.7946460257664406, -0.36745662160970244]},
    'dpmpp_2m-ve-karras': {'nfe': 6, 'steps': 6, 'rejected': 0, 'x': [1.058213316319588, -0.4371303274428974, 1.2450118089088564, -0.722758367825919, 0.8012645246031936, -0.3910489740470882]},
    'dpmpp_3m-vp': {'nfe': 6, 'steps': 6, 'rejected': 0, 'x': [1.1205627668541704, -0.4955253736178138, 1.2445992364857374, -0.8152016913659393, 0.7971478182213886, -0.44349163529913077]},
    'dpmpp_3m-single-vp': {'nfe': 7, 'steps': 6, 'rejected': 0, 'x': [1.1205447704871208, -0.4955101230903802, 1.2446244532628683, -0.815226930051025, 0.7971341598153399, -0.4435120193837687]},
    'unipc-vp': {'nfe': 6, 'steps': 6, 'rejected': 0, 'x': [1.118233491663889, -0.4983482998508091, 1.197084910238698, -0.8038952245621432, 0.776097524957859, -0.44148440766363156]},
    'unipc-bh1-ve': {'nfe': 6, 'steps': 6, 'rejected': 0, 'x': [1.007848238618832, -0.4649373028070657, 1.0789500663729685, -0.698452700114652, 0.7175651841619889, -0.4080066877391473]},
    'edm_heun-ve': {'nfe': 10, 'steps': 5, 'rejected': 0, 'x': [1.026024656063504, -0.5005808969889948, 1.2649145522225416, -0.8415041817287072, 0.7990631774736171, -0.47623047291543]},
    'edm_heun-vp': {'nfe': 10, 'steps': 5, 'rejected': 0, 'x': [1.5584874107318718, -0.7504929981421782, 1.5579850385359684, -1.144731748667342, 0.9401684648750789, -0.5955987572433364]},
    'lms-ve': {'nfe': 8, 'steps': 8, 'rejected': 0, 'x': [0.9102301311603161, -0.3693845134199793, 1.1272141912603024, -0.6142238549733056, 0.7520673193740864, -0.34620351885195627]},
    'ipndm-ve': {'nfe': 8, 'steps': 8, 'rejected': 0, 'x': [0.9154286639868837, -0.4085074550139477, 1.119340022950816, -0.6657351122255343, 0.7341817576845195, -0.3816446781234508]},
    'deis-vp': {'nfe': 8, 'steps': 8, 'rejected': 0, 'x': [0.9536536386651508, -0.40316206918134534, 1.1180225260386747, -0.6382692535438153, 0.7494804577071754, -0.362491135983166]},
    'euler_ancestral-ve': {'nfe': 6, 'steps': 6, 'rejected': 0, 'x': [1.0927869487909598, -0.39975340038685514, -0.7516853914309777, 0.6431705050428589, 0.500397674840389, -0.07958957056284897]},
    'dpmpp_2m_sde-vp': {'nfe': 6, 'steps': 6, 'rejected': 0, 'x': [1.1168977590241245, -0.07350066995317928, 0.9960076828008357, -0.10758335426118668, 1.2333723692734326, -0.3888115576787133]},
    'dpmpp_2m_sde-heun-ve': {'nfe': 6, 'steps': 6, 'rejected': 0, 'x': [1.8674762863822485, 0.1543225482662113, 1.7890130306904823, -0.5731832734278692, 1.5807968269916781, -0.7057233014578834]},
    'dpmpp_sde-vp': {'nfe': 10, 'steps': 5, 'rejected': 0, 'x': [1.1225669018129163, -0.2641290914064904, 1.100626335826134, -0.19053577111864123, 0.863169613460223, -0.2643198045417021]},
    'edm_stochastic-ve': {'nfe': 12, 'steps': 6, 'rejected': 0, 'x': [1.425058549522028, -0.6089065028142887, -0.8424524974442249, 0.7880419923237956, 0.5729478647789756, -0.22722443157068536]},
    'restart-ve': {'nfe': 16, 'steps': 6, 'rejected': 0, 'x': [1.7345097684299122, -0.0683565928617817, 1.3561546354498168, -0.24551920803848018, 0.49770578035797214, 0.05773376359118385]},
    'pc-vp': {'nfe': 12, 'steps': 6, 'rejected': 0, 'x': [1.1045280027157147, -0.1951168995877084, -0.6176149361952682, 1.3593805009881805, -0.22783444095478778, 0.2594909735302428]},
    'pc-ald-ve': {'nfe': 12, 'steps': 6, 'rejected': 0, 'x': [-0.9675704412720373, 0.18517581720767085, -1.1128904904835786, 0.9643847543028256, -1.149645090444085, 0.5611929332935297]},
    'ddim-denoise-vp': {'nfe': 7, 'steps': 6, 'rejected': 0, 'x': [0.9808915407124408, -0.34316694154379407, 1.1424424618457159, -0.4923899530158598, 0.8019838527270348, -0.2924096216552888]},
    'ddim-save-vp': {'nfe': 8, 'steps': 8, 'rejected': 0, 'x': [1.0198683198896814, -0.3628373413205644, 1.1541278784025564, -0.5013676316233396, 0.7943388387011653, -0.29357036939318054, -0.22233246161482323, -0.40819445049583375, 0.1275613726651542, -0.37001011922808236]},
    'bosh3-vp': {'nfe': 82, 'steps': 24, 'rejected': 3, 'x': [0.937740608244572, -0.4080916077417335, 1.1175677709337837, -0.6485597143340465, 0.739521083586015, -0.3710656606642404]},
    'dopri5-ve': {'nfe': 115, 'steps': 19, 'rejected': 0, 'x': [0.8976060710033267, -0.3867127907487561, 1.1270191017061688, -0.6536314852312325, 0.7383119467593738, -0.36908230202731135]},
    'dopri5-shared-vp': {'nfe': 49, 'steps': 7, 'rejected': 1, 'x': [0.9380329723732771, -0.40800906702086215, 1.1177355731612115, -0.6484169150014545, 0.7396109623260334, -0.3709182311897307]},
    'dopri5-save-vp': {'nfe': 56, 'steps': 8, 'rejected': 2, 'x': [0.9382893225602812, -0.4080605797985453, 1.1178192535566716, -0.648209531331009, 0.7396759600106, -0.37078822347816653, -0.22438825614005806, -0.4079593699730666]},
    'dpm_adaptive-ve': {'nfe': 36, 'steps': 8, 'rejected': 5, 'x': [0.8714949543610279, -0.3742973897180251, 1.1677473705256194, -0.6841475541843429, 0.6950715657083947, -0.36400158720847453]},
    'dpm_adaptive-o2-vp': {'nfe': 80, 'steps': 23, 'rejected': 17, 'x': [0.9193808420564933, -0.4105405902365744, 1.1159203835969944, -0.6681622937395957, 0.7360495236448926, -0.3793441257400048]},
    'improved_euler-vp': {'nfe': 110, 'steps': 32, 'rejected': 23, 'x': [0.2801428003558774, -0.2179244183369403, 0.334634702902097, -0.4683425541279767, 0.4249184618705932, -0.46717659943569795]},
    'improved_euler-ode-ve': {'nfe': 78, 'steps': 27, 'rejected': 14, 'x': [0.898754490852572, -0.38878742167926195, 1.1295002337063302, -0.6695210055517006, 0.7382347588685949, -0.37573967999050545]},
    'torchsde.euler-vp': {'nfe': 6, 'steps': 6, 'rejected': 0, 'x': [-0.23501387560019493, 0.2647973579755699, 1.1551440892649165, -0.1145963723074534, 0.7317453882090191, 0.07225920075111214]},
    'torchsde.milstein-vp': {'nfe': 6, 'steps': 6, 'rejected': 0, 'x': [-0.23501387560019493, 0.2647973579755699, 1.1551440892649165, -0.1145963723074534, 0.7317453882090191, 0.07225920075111214]},
    'torchsde.heun-ve': {'nfe': 12, 'steps': 6, 'rejected': 0, 'x': [-7.776942540263454, -5.63208689067315, 10.65511792530203, -12.091035111844986, -2.252548334836637, -9.105705490568809]},
    'torchsde.euler-adaptive-vp': {'nfe': 63, 'steps': 18, 'rejected': 3, 'x': [0.2792646365410978, -0.29848565888052103, 0.2752656148953837, -0.5477266249049995, 0.4214553362075859, -0.49709171613227404]},
    'torchsde.milstein-adaptive-ve': {'nfe': 138, 'steps': 35, 'rejected': 11, 'x': [0.6861424482423267, -0.21615939038815724, 0.5750084794774133, -0.23130049647760287, 0.534695091462618, -0.5393070115123076]},
}


@pytest.mark.parametrize("case,which,kind,method,kwargs", CASES, ids=[c[0] for c in CASES])
def test_golden(case, which, kind, method, kwargs):
    got, want = run_case(which, kind, method, kwargs), GOLDEN[case]
    assert (got["nfe"], got["steps"], got["rejected"]) == (want["nfe"], want["steps"], want["rejected"])
    # float64 throughout: a reordering of the same arithmetic moves the last bits, a changed method far more
    torch.testing.assert_close(torch.tensor(got["x"], dtype=torch.float64),
                               torch.tensor(want["x"], dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_every_native_method_has_an_anchor():
    anchored = {c[3].split(".")[-1] for c in CASES if not c[3].startswith("torchsde.")}
    native = {m.name for m in sdekit.methods(backend="sdekit")}
    assert native <= anchored, f"add golden cases for {sorted(native - anchored)}"


if __name__ == "__main__":
    torch.set_num_threads(1)
    print("GOLDEN = {")
    for case, which, kind, method, kwargs in CASES:
        print(f"    {case!r}: {run_case(which, kind, method, kwargs)!r},")
    print("}")
