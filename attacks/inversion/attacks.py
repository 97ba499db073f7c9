"""Gradient inversion attacks: reconstruct a client's images from what the server reads.

Every attack takes a :class:`~attacks.inversion.cases.ServerView` (the update the server
sees and the public training settings) and returns a :class:`Reconstruction`;
it never sees the ground truth. Methods (``METHODS``):

* ``dlg`` — Deep Leakage from Gradients (Zhu, Liu, Han, NeurIPS 2019): dummy
  images *and* soft labels optimised jointly with L-BFGS to minimise the squared
  L2 distance between their gradient and the observed one.
* ``idlg`` — improved DLG (Zhao, Mopuri, Bilen 2020): the label is read off the
  sign of the last layer's gradient (only the true class has a negative
  bias gradient under cross-entropy), then images alone are matched as in DLG.
* ``ig`` — Inverting Gradients (Geiping, Bauermeister, Droege, Moeller,
  NeurIPS 2020): cosine distance over all parameters plus total variation, Adam
  on the *signed* gradient, projection onto the data box, step decays at 3/8,
  5/8 and 7/8 of the run. Scale-invariant, so clipping alone does not stop it.
* ``analytic`` — closed-form recovery through a fully connected first layer
  with bias (Phong et al. 2018; Geiping et al. 2020, Prop. 3.1): row ``i`` of
  the weight gradient is ``dL/db_i * x``, so ``x = g_W[i] / g_b[i]``; we take the
  least-squares combination over all rows (the best linear estimate under
  noise). Exact for one image, also for a multi-step update of one image.

Multi-step updates: when the view reports ``local_steps > 1`` (FedAvg), the
optimisation attacks unroll that many SGD steps of the known learning rate on
the dummy data and match the simulated weight update instead of one gradient
(Geiping et al. 2020, Sec. 6; Dimitrov et al. 2022, "Data leakage in federated
averaging").

The number of images to reconstruct defaults to what the server knows is behind
the update (``sum n_k``): under secure aggregation that is the whole round, so
the attack reconstructs every client's images at once and the scorer matches
them to the target's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from attacks.inversion.cases import ServerView
from securefl.exceptions import ConfigTypeError, ConfigValueError


@dataclass(frozen=True)
class Reconstruction:
    """An attack's output: images in the data range and, where recovered, labels."""

    images: torch.Tensor
    labels: torch.Tensor | None
    loss: float  #: final matching loss (what restarts are chosen by)


@dataclass(frozen=True)
class AttackConfig:
    """Optimisation settings (the defaults suit 8x8 digits on a small MLP)."""

    iterations: int = 0  #: 0 picks the method's default
    restarts: int = 2
    lr: float = 0.1  #: Adam step size (ig)
    tv: float = 1e-4  #: total-variation weight (ig)
    seed: int = 0  #: seeds the dummy-data initialisation (not a secret)

    def __post_init__(self) -> None:
        for name in ("iterations", "restarts", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigTypeError(name, v, "must be an integer")
        for name in ("lr", "tv"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigTypeError(name, v, "must be a number")
        if self.iterations < 0:
            raise ConfigValueError("iterations", self.iterations, "must be >= 0")
        if self.restarts < 1:
            raise ConfigValueError("restarts", self.restarts, "must be >= 1")
        if not self.lr > 0:
            raise ConfigValueError("lr", self.lr, "must be > 0")
        if not self.tv >= 0:
            raise ConfigValueError("tv", self.tv, "must be >= 0")


# ---------------------------------------------------------------- shared pieces
def _last_linear(model: nn.Module) -> nn.Linear:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ConfigValueError("model", type(model).__name__, "has no linear layer to attack")
    return layers[-1]


def _first_linear(model: nn.Module) -> nn.Linear:
    return next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def _param_index(model: nn.Module, tensor: torch.Tensor) -> int:
    for i, p in enumerate(model.parameters()):
        if p is tensor:
            return i
    raise ValueError("parameter not in model")


def extract_labels(view: ServerView, n: int) -> torch.Tensor:
    """Labels from the last layer's bias gradient (iDLG, Zhao et al. 2020).

    Under cross-entropy ``dL/db_j = p_j - [j = y]``: negative only for the true
    class of each image. For ``n`` images the ``n`` most negative classes are
    taken (Yin et al. 2021), repeating the most negative ones if fewer than ``n``
    are negative. Without a bias, the row of the weight gradient whose inner
    products with the others are negative is used instead (iDLG's rule).
    """
    last = _last_linear(view.model)
    grads = view.mean_gradient()
    if last.bias is not None:
        g = grads[_param_index(view.model, last.bias)].double()
    else:
        gw = grads[_param_index(view.model, last.weight)].double()
        g = (gw @ gw.T).sum(1) - (gw * gw).sum(1)
    order = torch.argsort(g)
    negative = int((g < 0).sum())
    if negative >= n or negative == 0:
        return order[:n].clone()
    reps = order[:negative].repeat((n + negative - 1) // negative)
    return reps[:n].clone()


def _simulate(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    steps: int,
    lr: float,
    soft: bool,
    groups: int = 1,
) -> list[torch.Tensor]:
    """The mean one-step gradient the dummy data would produce: ``-Delta/(lr*steps)``
    after unrolling ``steps`` SGD steps (the gradient itself when ``steps == 1``).

    ``groups > 1`` models an aggregate of that many clients: the dummy batch is split
    into equal shares, each share is trained on its own from the same starting point
    (as each client does), and the weighted sum of the updates is matched. With one
    local step this equals the whole batch's gradient, so it only matters for FedAvg."""
    if steps > 1 and groups > 1 and len(x) % groups == 0:
        size = len(x) // groups
        parts = [
            _simulate(model, params, x[i * size:(i + 1) * size], target[i * size:(i + 1) * size], steps, lr, soft)
            for i in range(groups)
        ]
        return [sum(p[j] for p in parts) / groups for j in range(len(parts[0]))]
    names = list(params)

    def loss_at(p: dict[str, torch.Tensor]) -> torch.Tensor:
        out = functional_call(model, p, (x,))
        if soft:
            return torch.mean(torch.sum(-F.softmax(target, dim=-1) * F.log_softmax(out, dim=-1), dim=-1))
        return F.cross_entropy(out, target)

    if steps == 1:
        return list(torch.autograd.grad(loss_at(params), [params[n] for n in names], create_graph=True))
    cur = dict(params)
    for _ in range(steps):
        g = torch.autograd.grad(loss_at(cur), [cur[n] for n in names], create_graph=True)
        cur = {n: cur[n] - lr * gi for n, gi in zip(names, g)}
    return [(params[n] - cur[n]) / (lr * steps) for n in names]


def _groups(view: ServerView, n: int) -> int:
    """How many separately trained clients the attack models: all of the round's
    contributors when it reconstructs every image behind the update (equal shares),
    else one."""
    return view.contributors if n == view.images and n % max(view.contributors, 1) == 0 else 1


def _setup(view: ServerView):
    model = _double_copy(view.model)
    params = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
    target = [g.detach().double() for g in view.mean_gradient()]
    return model, params, target


def _double_copy(model: nn.Module) -> nn.Module:
    import copy

    m = copy.deepcopy(model).double()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _l2(sim: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    return sum(((s - t) ** 2).sum() for s, t in zip(sim, target))


def _cosine(sim: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    dot = sum((s * t).sum() for s, t in zip(sim, target))
    ns = torch.sqrt(sum((s * s).sum() for s in sim))
    nt = torch.sqrt(sum((t * t).sum() for t in target))
    return 1 - dot / (ns * nt + 1e-30)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: mean absolute difference of neighbouring pixels."""
    if x.dim() < 4:
        return x.new_zeros(())
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


def _count(view: ServerView, n: int | None) -> int:
    k = view.images if n is None else n
    if k < 1:
        raise ConfigValueError("images", k, "must be >= 1")
    return k


# ---------------------------------------------------------------- attacks
def _lbfgs_match(
    view: ServerView, n: int, labels: torch.Tensor | None, cfg: AttackConfig, default_iters: int
) -> Reconstruction:
    model, params, target = _setup(view)
    iters = cfg.iterations or default_iters
    lo, hi = view.data_range
    gen = torch.Generator().manual_seed(cfg.seed)
    best: Reconstruction | None = None
    for _ in range(cfg.restarts):
        x = torch.randn((n, *view.input_shape), generator=gen, dtype=torch.float64).requires_grad_(True)
        variables = [x]
        if labels is None:
            y = torch.randn((n, view.num_classes), generator=gen, dtype=torch.float64).requires_grad_(True)
            variables.append(y)
        else:
            y = labels
        opt = torch.optim.LBFGS(
            variables,
            lr=1.0,
            max_iter=iters,
            history_size=100,
            tolerance_grad=1e-14,
            tolerance_change=1e-16,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            sim = _simulate(model, params, x, y, view.local_steps, view.local_lr, soft=labels is None, groups=_groups(view, n))
            loss = _l2(sim, target)
            loss.backward()
            return loss

        opt.step(closure)
        sim = _simulate(model, params, x, y, view.local_steps, view.local_lr, soft=labels is None, groups=_groups(view, n))
        loss = float(_l2(sim, target).detach())
        if loss != loss:  # nan: a diverged restart
            continue
        pred = y.detach().argmax(-1) if labels is None else labels
        rec = Reconstruction(x.detach().clamp(lo, hi).float(), pred.clone(), loss)
        if best is None or rec.loss < best.loss:
            best = rec
    if best is None:
        x = torch.full((n, *view.input_shape), (lo + hi) / 2)
        best = Reconstruction(x, labels, float("nan"))
    return best


def dlg(view: ServerView, *, n: int | None = None, config: AttackConfig = AttackConfig()) -> Reconstruction:
    """DLG (Zhu et al. 2019): joint image and soft-label L2 gradient matching, L-BFGS."""
    return _lbfgs_match(view, _count(view, n), None, config, default_iters=300)


def idlg(view: ServerView, *, n: int | None = None, config: AttackConfig = AttackConfig()) -> Reconstruction:
    """iDLG (Zhao et al. 2020): label from the last layer's gradient, then DLG on images."""
    k = _count(view, n)
    return _lbfgs_match(view, k, extract_labels(view, k), config, default_iters=300)


def inverting_gradients(
    view: ServerView, *, n: int | None = None, config: AttackConfig = AttackConfig()
) -> Reconstruction:
    """Inverting Gradients (Geiping et al. 2020): cosine distance + TV, signed Adam,
    box projection, step decay at 3/8, 5/8, 7/8 of the iterations."""
    k = _count(view, n)
    labels = extract_labels(view, k)
    model, params, target = _setup(view)
    iters = config.iterations or 800
    lo, hi = view.data_range
    gen = torch.Generator().manual_seed(config.seed)
    best: Reconstruction | None = None
    for _ in range(config.restarts):
        x = torch.rand((k, *view.input_shape), generator=gen, dtype=torch.float64)
        x = (lo + (hi - lo) * x).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=config.lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[iters * 3 // 8, iters * 5 // 8, iters * 7 // 8], gamma=0.1
        )
        for _ in range(iters):
            opt.zero_grad()
            sim = _simulate(model, params, x, labels, view.local_steps, view.local_lr, soft=False, groups=_groups(view, k))
            loss = _cosine(sim, target) + config.tv * total_variation(x)
            loss.backward()
            x.grad.sign_()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
        sim = _simulate(model, params, x, labels, view.local_steps, view.local_lr, soft=False, groups=_groups(view, k))
        final = float((_cosine(sim, target) + config.tv * total_variation(x)).detach())
        rec = Reconstruction(x.detach().float(), labels.clone(), final)
        if best is None or rec.loss < best.loss:
            best = rec
    assert best is not None
    return best


def analytic(view: ServerView, *, n: int | None = None, config: AttackConfig = AttackConfig()) -> Reconstruction:
    """Closed-form inversion of a fully connected first layer with bias.

    ``g_W = sum_b delta_b x_b^T`` and ``g_b = sum_b delta_b``. One image:
    ``x = sum_i g_b[i] g_W[i] / sum_i g_b[i]^2`` (exact without noise). Several
    images: each row's ratio ``g_W[i] / g_b[i]`` is a weighted mix of the batch;
    the ratios of the strongest rows are grouped into ``n`` clusters (weighted
    k-means, farthest-point start) and the cluster means returned.
    """
    k = _count(view, n)
    model = view.model
    first = _first_linear(model)
    if not isinstance(first, nn.Linear) or first.bias is None:
        raise ConfigValueError("model", type(model).__name__, "analytic attack needs a fully connected first layer with bias")
    grads = view.mean_gradient()
    gw = grads[_param_index(model, first.weight)].double()
    gb = grads[_param_index(model, first.bias)].double()
    lo, hi = view.data_range
    shape = view.input_shape
    if k == 1:
        den = (gb * gb).sum()
        x = (gb @ gw) / den if den > 0 else torch.full((gw.shape[1],), (lo + hi) / 2, dtype=torch.float64)
        images = x.view(1, *shape)
    else:
        strong = gb.abs() >= 0.05 * gb.abs().max()
        ratios = gw[strong] / gb[strong, None]
        weights = gb[strong] ** 2
        images = _weighted_kmeans(ratios, weights, k).view(k, *shape)
    labels = extract_labels(view, k)
    return Reconstruction(images.clamp(lo, hi).float(), labels, float("nan"))


def _weighted_kmeans(points: torch.Tensor, weights: torch.Tensor, k: int, iters: int = 20) -> torch.Tensor:
    m = len(points)
    if m <= k:
        reps = points.repeat((k + m - 1) // m, 1)
        return reps[:k]
    centers = [points[int(torch.argmax(weights))]]
    for _ in range(1, k):
        d = torch.cdist(points, torch.stack(centers)).min(1).values
        centers.append(points[int(torch.argmax(d * weights.sqrt()))])
    c = torch.stack(centers)
    for _ in range(iters):
        assign = torch.cdist(points, c).argmin(1)
        for j in range(k):
            sel = assign == j
            if sel.any():
                w = weights[sel]
                c[j] = (points[sel] * w[:, None]).sum(0) / w.sum()
    return c


#: method name -> attack ``(view, *, n, config) -> Reconstruction``
METHODS: dict[str, Callable[..., Reconstruction]] = {
    "dlg": dlg,
    "idlg": idlg,
    "ig": inverting_gradients,
    "analytic": analytic,
}


def reconstruct(method: str, view: ServerView, *, n: int | None = None, config: AttackConfig = AttackConfig()) -> Reconstruction:
    """Run a registered attack by name."""
    if method not in METHODS:
        raise ConfigValueError("method", method, f"must be one of {', '.join(METHODS)}")
    return METHODS[method](view, n=n, config=config)
