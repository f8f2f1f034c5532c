"""Flow-matching samplers (UniPC multistep, Euler) as pure JAX step functions.

Flow matching: x_σ = (1 − σ)·x0 + σ·ε, and the model predicts the velocity v = ε − x0, so
x0 = x − σ·v. A schedule is a decreasing list of sigmas σ_0 > … > σ_{N−1} > σ_N = 0; step i moves
the sample from σ_i to σ_{i+1}. Everything that depends only on the schedule (sigmas, timesteps,
every solver coefficient) is computed once on the host in numpy; a step only gathers row `i` of
those tables and forms linear combinations of arrays, so a whole loop runs in `jax.lax.scan` with
a traced step index. The host arithmetic reproduces diffusers' float32 evaluation order so that a
sample matches `UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")`
and `FlowMatchEulerDiscreteScheduler` step by step to float32 rounding.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

F32 = np.float32
NAMES = ("unipc", "euler")
UNIPC_CLASS = "UniPCMultistepScheduler"
EULER_CLASS = "FlowMatchEulerDiscreteScheduler"


class SchedulerState(NamedTuple):
  """Sampler state between steps (a pytree; `None` fields are unused by that sampler)."""
  step: jax.Array  # () int32: index of the next step
  x0_preds: jax.Array | None = None  # (order, *shape) f32: data predictions of the last steps, newest last
  last_sample: jax.Array | None = None  # (*shape) f32: the (corrected) sample the previous step started from


class _Update(NamedTuple):
  """Per-step coefficients of one UniPC update from the history m (newest m0) and sample x:

  x' = a·x − b·m0 − c·(Σ_k rho_k·(m_k − m0)/rk_k + rho_t·(m_t − m0)),

  where the m_t term (the new data prediction) exists only in the corrector. Shapes (N,), (N, order−1).
  """
  a: np.ndarray
  b: np.ndarray
  c: np.ndarray
  rk: np.ndarray
  rho: np.ndarray
  rho_t: np.ndarray


# ----------------------------------------------------------------------------------------------
# Schedules (host, numpy)


def unipc_flow_sigmas(num_steps: int, shift: float, num_train_timesteps: int = 1000,
                      final_sigmas_type: str = "zero") -> tuple[np.ndarray, np.ndarray]:
  """(sigmas (N+1,) float32, timesteps (N,) int64) of UniPC with flow sigmas.

  σ = linspace(1, 1/T, N+1)[:-1] shifted to sσ/(1+(s−1)σ) in float64; a first sigma of 1 becomes
  1 − 1e-6 (its log-SNR must be finite); timesteps = trunc(σ·T); the final sigma is 0 ("zero") or
  the last one ("sigma_min"); sigmas are stored as float32.
  """
  sigmas = np.linspace(1, 1 / num_train_timesteps, num_steps + 1)[:-1]
  sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
  if abs(sigmas[0] - 1) < 1e-6:
    sigmas[0] -= 1e-6
  timesteps = (sigmas * num_train_timesteps).astype(np.int64)
  last = 0.0 if final_sigmas_type == "zero" else sigmas[-1]
  return np.concatenate([sigmas, [last]]).astype(F32), timesteps


def euler_flow_sigmas(num_steps: int, shift: float,
                      num_train_timesteps: int = 1000) -> tuple[np.ndarray, np.ndarray]:
  """(sigmas (N+1,) float32, timesteps (N,) float32) of flow-match Euler.

  The end points are the shifted training sigmas 1 and 1/T (shifted in float32); N points are spaced
  linearly between them and shifted once more in float64, then rounded to float32; timesteps =
  σ·T in float32; a final sigma 0 is appended. For shift ≠ 1 this differs from UniPC's schedule.
  """
  train = np.array([num_train_timesteps, 1], F32) / F32(num_train_timesteps)
  train = F32(shift) * train / (F32(1) + F32(shift - 1) * train)
  hi, lo = float(train[0]), float(train[1])
  sigmas = np.linspace(hi * num_train_timesteps, lo * num_train_timesteps, num_steps) / num_train_timesteps
  sigmas = (shift * sigmas / (1 + (shift - 1) * sigmas)).astype(F32)
  timesteps = sigmas * F32(num_train_timesteps)
  return np.concatenate([sigmas, np.zeros(1, F32)]), timesteps


# log and expm1 of a float32, rounded once to float32 (torch evaluates these on 0-d float32 tensors).
def _log(x):
  return F32(np.log(np.float64(x)))


def _expm1(x):
  return F32(np.expm1(np.float64(x)))


def _fma(a, b, c):
  """a·b + c rounded once to float32 (the float64 product of two float32 numbers is exact)."""
  return F32(np.float64(a) * np.float64(b) + np.float64(c))


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Solve a·x = b in float32 by LU with partial pivoting, fused multiply-adds in the updates and
  the reciprocal of each pivot in the back substitution; for the 2×2 systems of order 2 this rounds
  exactly as torch.linalg.solve (MKL sgesv)."""
  a, b, n = [[F32(v) for v in row] for row in a], [F32(v) for v in b], len(b)
  for k in range(n):
    p = max(range(k, n), key=lambda i: abs(a[i][k]))
    a[k], a[p], b[k], b[p] = a[p], a[k], b[p], b[k]
    for i in range(k + 1, n):
      a[i][k] = a[i][k] / a[k][k]
      for j in range(k + 1, n):
        a[i][j] = _fma(-a[i][k], a[k][j], a[i][j])
      b[i] = _fma(-a[i][k], b[k], b[i])
  for k in reversed(range(n)):
    b[k] = b[k] * (F32(1) / a[k][k])
    for i in range(k):
      b[i] = _fma(-b[k], a[i][k], b[i])
  return np.array(b, F32)


def _lambda(sigma):
  """Log-SNR log(α/σ) with α = 1 − σ, in float32 (+inf at σ = 0)."""
  return _log(F32(1) - sigma) - _log(sigma)


def _uni_coefficients(sigmas, lam, t: int, s0: int, hist: list[int], order: int, bh2: bool, corrector: bool):
  """UniPC-p (B(h) variant, data prediction) coefficients for the move σ_{s0} → σ_t using the
  history sigmas `hist` (newest first): (a, b, c, rks, rhos, rho_t). Float32 as diffusers."""
  if sigmas[t] == sigmas[s0]:  # final_sigmas_type="sigma_min" ends on a repeated sigma: the identity
    return F32(1), F32(0), F32(0), [F32(1)] * len(hist), np.zeros(order - 1, F32), F32(0)
  alpha_t = F32(1) - sigmas[t]
  h = lam[t] - lam[s0]
  rks = [(lam[si] - lam[s0]) / h for si in hist] + [F32(1)]
  hh = -h
  h_phi_1 = _expm1(hh)  # e^{hh} − 1
  h_phi_k = h_phi_1 / hh - F32(1)
  b_h = _expm1(hh) if bh2 else hh
  rows, rhs, factorial = [], [], 1
  for i in range(1, order + 1):
    rows.append([F32(1) if i == 1 else rk if i == 2 else rk * rk for rk in rks])
    rhs.append(h_phi_k * F32(factorial) / b_h)
    factorial *= i + 1
    h_phi_k = h_phi_k / hh - F32(1 / factorial)
  r, rhs = np.array(rows, F32), np.array(rhs, F32)
  if corrector:
    rhos = np.array([0.5], F32) if order == 1 else _solve(r, rhs)
    rhos, rho_t = rhos[:-1], rhos[-1]
  else:
    rho_t = F32(0)
    if order == 1:
      rhos = np.zeros(0, F32)
    elif order == 2:
      rhos = np.array([0.5], F32)
    else:
      rhos = _solve(r[:-1, :-1], rhs[:-1])
  return sigmas[t] / sigmas[s0], alpha_t * h_phi_1, alpha_t * b_h, rks[:-1], rhos, rho_t


def _unipc_tables(sigmas, solver_order, bh2, lower_order_final, disable_corrector):
  """(corrector _Update, use_corrector (N,) bool, predictor _Update) for every step."""
  n, p = len(sigmas) - 1, solver_order
  with np.errstate(divide="ignore", invalid="ignore"):
    lam = [_lambda(s) for s in sigmas]
    orders = [min(p, n - i if lower_order_final else p, i + 1) for i in range(n)]
    pred = [_uni_coefficients(sigmas, lam, i + 1, i, [i - k for k in range(1, orders[i])], orders[i], bh2, False)
            for i in range(n)]
    corr = [None] + [_uni_coefficients(sigmas, lam, i, i - 1, [i - 1 - k for k in range(1, orders[i - 1])],
                                       orders[i - 1], bh2, True) for i in range(1, n)]
  use_corrector = np.array([i > 0 and (i - 1) not in disable_corrector for i in range(n)])

  def table(rows):
    # Unused history slots get rho = 0 and rk = 1 so that every term stays finite.
    a, b, c = (np.array([r[j] if r else 0 for r in rows], F32) for j in range(3))
    rk, rho = np.ones((n, p - 1), F32), np.zeros((n, p - 1), F32)
    for i, r in enumerate(rows):
      if r:
        rk[i, :len(r[3])], rho[i, :len(r[4])] = r[3], r[4]
    rho_t = np.array([r[5] if r else 0 for r in rows], F32)
    return _Update(a, b, c, rk, rho, rho_t)

  tables = table(corr), use_corrector, table(pred)
  for arr in jax.tree.leaves(tables):
    if not np.all(np.isfinite(arr)):
      raise ValueError("UniPC coefficients are not finite for this schedule")
  return tables


# ----------------------------------------------------------------------------------------------
# Samplers


def _take(table: _Update, i) -> _Update:
  return _Update(*(jnp.asarray(x)[i] for x in table))


def _full(scalar, shape):
  """`scalar` broadcast to `shape` behind an optimization barrier: XLA rewrites x / broadcast(s) as
  x · (1/s), which is not correctly rounded; dividing by a full array keeps torch's true division."""
  return jax.lax.optimization_barrier(jnp.broadcast_to(scalar, shape))


def _uni_update(u: _Update, x, hist, m_t=None):
  """One UniPC predictor (m_t None) or corrector update with the gathered coefficients `u`."""
  m0 = hist[-1]
  out = u.a * x - u.b * m0
  terms = [u.rho[k - 1] * ((hist[-(k + 1)] - m0) / _full(u.rk[k - 1], m0.shape))
           for k in range(1, hist.shape[0])]
  if m_t is not None:
    terms.append(u.rho_t * (m_t - m0))
  if terms:
    res = terms[0]
    for term in terms[1:]:
      res = res + term
    out = out - u.c * res
  return out


_UNIPC_ONLY = ("solver_order", "solver_type", "lower_order_final", "disable_corrector", "final_sigmas_type")


@dataclasses.dataclass(frozen=True)
class Scheduler:
  """A flow-matching sampler over a fixed schedule of `num_steps` steps; equal settings compare and
  hash equal, so it can be a static argument of `jax.jit` without recompiling.

  `timesteps[i]` is what the transformer receives at step i (int64 for UniPC, float32 for Euler, as
  diffusers); `sigmas` (N+1,) float32 ends with the final sigma. `init(sample)` is the state before
  step 0; `step(state, model_output, sample) -> (prev_sample, state)` takes step `state.step` and is
  pure, so the loop can be a `jax.lax.scan`. Both samplers compute in float32 and return `sample`'s
  dtype. UniPC options follow diffusers: `disable_corrector` lists steps i whose result is not
  corrected when step i+1 runs.
  """
  name: str  # "unipc" | "euler"
  num_steps: int
  shift: float
  solver_order: int = 2  # this and the next four: UniPC only
  solver_type: str = "bh2"
  lower_order_final: bool = True
  disable_corrector: tuple[int, ...] = ()
  final_sigmas_type: str = "zero"
  num_train_timesteps: int = 1000

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
    is_int = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)  # noqa: E731
    if self.name not in NAMES:
      raise ValueError(f"scheduler name={self.name!r}: expected one of {NAMES}")
    if not is_int(self.num_steps) or self.num_steps < 1:
      raise ValueError(f"num_steps={self.num_steps!r} must be a positive integer")
    if not is_int(self.num_train_timesteps) or self.num_train_timesteps < 1:
      raise ValueError(f"num_train_timesteps={self.num_train_timesteps!r} must be a positive integer")
    if not isinstance(self.shift, (int, float, np.number)) or not math.isfinite(self.shift) or self.shift <= 0:
      raise ValueError(f"shift={self.shift!r} must be a finite positive number")
    if not all(is_int(i) and i >= 0 for i in self.disable_corrector):
      raise ValueError(f"disable_corrector={self.disable_corrector!r} must be step indices")
    set_("num_steps", int(self.num_steps))
    set_("num_train_timesteps", int(self.num_train_timesteps))
    set_("shift", float(self.shift))
    set_("disable_corrector", tuple(sorted({int(i) for i in self.disable_corrector})))
    if self.name == "euler":
      changed = [f.name for f in dataclasses.fields(self) if f.name in _UNIPC_ONLY
                 and getattr(self, f.name) != f.default]
      if changed:
        raise ValueError(f"options {changed} apply to the UniPC scheduler only, not to euler")
      sigmas, timesteps = euler_flow_sigmas(self.num_steps, self.shift, self.num_train_timesteps)
      set_("_dt", sigmas[1:] - sigmas[:-1])
    else:
      self._check_unipc()
      sigmas, timesteps = unipc_flow_sigmas(self.num_steps, self.shift, self.num_train_timesteps,
                                            self.final_sigmas_type)
      set_("_tables", _unipc_tables(sigmas, self.solver_order, self.solver_type == "bh2",
                                    self.lower_order_final, self.disable_corrector))
    sigmas.flags.writeable = timesteps.flags.writeable = False
    set_("sigmas", sigmas)
    set_("timesteps", timesteps)

  def _check_unipc(self):
    if self.solver_order not in (1, 2, 3) or isinstance(self.solver_order, bool):
      raise ValueError(f"solver_order={self.solver_order!r} is not supported (1, 2 or 3)")
    if self.solver_type not in ("bh1", "bh2"):
      raise ValueError(f"solver_type={self.solver_type!r} is not supported ('bh1' or 'bh2')")
    if self.final_sigmas_type not in ("zero", "sigma_min"):
      raise ValueError(f"final_sigmas_type={self.final_sigmas_type!r} is not supported ('zero' or 'sigma_min')")
    if not isinstance(self.lower_order_final, bool):
      raise ValueError(f"lower_order_final={self.lower_order_final!r} must be a bool")
    # Both cases below give non-finite samples in diffusers: the step into sigma 0 has an infinite
    # log-SNR step h.
    if not self.lower_order_final and self.final_sigmas_type == "zero" and self.solver_order > 1 \
        and self.num_steps > 1:
      raise ValueError("lower_order_final=False with final_sigmas_type='zero' is not supported: a multistep "
                       "update into sigma 0 divides by an infinite log-SNR step")
    if self.solver_type == "bh1" and self.final_sigmas_type == "zero":
      raise ValueError("solver_type='bh1' with final_sigmas_type='zero' is not supported: B(h) = h is infinite "
                       "on the step into sigma 0; use 'bh2'")

  @property
  def order(self) -> int:
    """Number of past data predictions the state keeps (0 for Euler)."""
    return self.solver_order if self.name == "unipc" else 0

  def init(self, sample) -> SchedulerState:
    """The state before step 0 for samples shaped like `sample`."""
    step = jnp.zeros((), jnp.int32)
    if self.name == "euler":
      return SchedulerState(step)
    return SchedulerState(step, jnp.zeros((self.order, *sample.shape), jnp.float32),
                          jnp.zeros(sample.shape, jnp.float32))

  def step(self, state: SchedulerState, model_output, sample) -> tuple[jax.Array, SchedulerState]:
    """Move `sample` from σ_i to σ_{i+1} (i = state.step < num_steps) given the model's velocity
    `model_output` at (sample, timesteps[i])."""
    i = state.step
    x, v = jnp.asarray(sample, jnp.float32), jnp.asarray(model_output, jnp.float32)
    if self.name == "euler":
      prev = x + jnp.asarray(self._dt)[i] * v
      return prev.astype(sample.dtype), SchedulerState(i + 1)
    corr, use_corrector, pred = self._tables
    x0 = x - jnp.asarray(self.sigmas)[i] * v
    hist = state.x0_preds
    corrected = _uni_update(_take(corr, i), state.last_sample, hist, x0)
    x = jnp.where(jnp.asarray(use_corrector)[i], corrected, x)
    hist = jnp.concatenate([hist[1:], x0[None]])
    prev = _uni_update(_take(pred, i), x, hist)
    return prev.astype(sample.dtype), SchedulerState(i + 1, hist, x)


def unipc_flow_config(flow_shift: float, diffusers_version: str | None = None) -> dict:
  """The `scheduler_config.json` of Wan's sampler: diffusers' UniPCMultistepScheduler with flow sigmas and
  `flow_shift`, in the order diffusers writes it."""
  version = {"_diffusers_version": diffusers_version} if diffusers_version else {}
  return {"_class_name": UNIPC_CLASS, **version, "num_train_timesteps": 1000,
          "prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": flow_shift, "solver_order": 2,
          "solver_type": "bh2", "predict_x0": True, "lower_order_final": True, "timestep_spacing": "linspace",
          "final_sigmas_type": "zero"}


def make_scheduler(name: str, num_steps: int, shift: float, **options) -> Scheduler:
  """A "unipc" or "euler" sampler of `num_steps` steps with flow shift `shift` (diffusers defaults;
  `options` are the other `Scheduler` fields, e.g. solver_order=3)."""
  return Scheduler(name, num_steps, shift, **options)


# ----------------------------------------------------------------------------------------------
# diffusers scheduler_config.json


def _is_int(v, lo: int) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _is_positive(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def scheduler_from_config(config: dict[str, Any], num_steps: int, shift: float | None = None) -> Scheduler:
  """The sampler a diffusers `scheduler_config.json` dict describes (UniPCMultistepScheduler with
  flow sigmas, or FlowMatchEulerDiscreteScheduler); `shift` overrides the config's flow shift.
  Options this module does not implement raise ValueError naming the field; fields without effect
  on flow sigmas (betas, timestep_spacing, steps_offset, ...) are ignored."""
  cls = config.get("_class_name")
  if cls not in (UNIPC_CLASS, EULER_CLASS):
    raise ValueError(f"scheduler config _class_name={cls!r} is not supported (expected {UNIPC_CLASS!r} "
                     f"or {EULER_CLASS!r})")

  def get(field, default, ok, expected):
    value = config.get(field, default)
    if not ok(value):
      raise ValueError(f"{cls} config field {field}={value!r} is not supported (expected {expected})")
    return value

  def off(*fields):
    for field in fields:
      get(field, None, lambda v: not v, "false or null")

  num_train_timesteps = get("num_train_timesteps", 1000, lambda v: _is_int(v, 1), "a positive integer")
  off("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_dynamic_shifting", "shift_terminal")
  if cls == EULER_CLASS:
    off("invert_sigmas", "stochastic_sampling")
    config_shift = get("shift", 1.0, _is_positive, "a positive number")
    return Scheduler("euler", num_steps, config_shift if shift is None else shift,
                     num_train_timesteps=num_train_timesteps)
  get("use_flow_sigmas", False, lambda v: v is True, "true: flow-matching sigmas")
  get("prediction_type", "epsilon", lambda v: v == "flow_prediction", "'flow_prediction'")
  get("predict_x0", True, lambda v: v is True, "true")
  get("timestep_spacing", "linspace", lambda v: v in ("linspace", "leading", "trailing"),
      "'linspace', 'leading' or 'trailing'")
  off("thresholding", "solver_p")
  # diffusers maps the DPM-Solver names midpoint/heun/logrho to bh2.
  solver_type = get("solver_type", "bh2", lambda v: v in ("bh1", "bh2", "midpoint", "heun", "logrho"),
                    "'bh1' or 'bh2'")
  config_shift = get("flow_shift", 1.0, _is_positive, "a positive number")
  return Scheduler(
      "unipc", num_steps, config_shift if shift is None else shift,
      solver_order=get("solver_order", 2, lambda v: _is_int(v, 1) and v <= 3, "1, 2 or 3"),
      solver_type="bh1" if solver_type == "bh1" else "bh2",
      lower_order_final=get("lower_order_final", True, lambda v: isinstance(v, bool), "true or false"),
      disable_corrector=get("disable_corrector", [], lambda v: isinstance(v, (list, tuple))
                            and all(_is_int(i, 0) for i in v), "a list of step indices"),
      final_sigmas_type=get("final_sigmas_type", "zero", lambda v: v in ("zero", "sigma_min"),
                            "'zero' or 'sigma_min'"),
      num_train_timesteps=num_train_timesteps)
