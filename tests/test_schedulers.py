"""Flow-matching samplers against diffusers' UniPCMultistepScheduler / FlowMatchEulerDiscreteScheduler,
step by step, with both sides fed the same model outputs along diffusers' trajectory."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from t2vu_jax.schedulers import Scheduler, make_scheduler, scheduler_from_config

SHAPE = (1, 16, 3, 8, 10)
TOL = 2e-6  # 8 fp32 ulps of the largest sample (|x| < 4); the last bits vary with the CPU (1.7e-6 seen)
SCAN_TOL = 1e-5
TARGET = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
# Wan2.1's scheduler/scheduler_config.json.
WAN_CONFIG = {
    "_class_name": "UniPCMultistepScheduler", "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
    "disable_corrector": [], "dynamic_thresholding_ratio": 0.995, "final_sigmas_type": "zero", "flow_shift": 3.0,
    "lower_order_final": True, "num_train_timesteps": 1000, "predict_x0": True,
    "prediction_type": "flow_prediction", "rescale_zero_terminal_snr": False, "sample_max_value": 1.0,
    "solver_order": 2, "solver_p": None, "solver_type": "bh2", "steps_offset": 0, "thresholding": False,
    "timestep_spacing": "linspace", "trained_betas": None, "use_beta_sigmas": False,
    "use_exponential_sigmas": False, "use_flow_sigmas": True, "use_karras_sigmas": False}


def velocity(x, i, sigma, xp=np):
  """A sample-dependent stand-in for the model: the exact velocity toward TARGET plus a nonlinear drift."""
  return (x - TARGET) / xp.maximum(sigma, np.float32(1e-3)) + np.float32(0.3) * xp.sin(3 * x + i)


def reference(name, num_steps, shift, **options):
  if name == "unipc":
    ref = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                                  **options)
  else:
    ref = FlowMatchEulerDiscreteScheduler(shift=shift, **options)
  ref.set_timesteps(num_steps)
  ref.set_begin_index(0)
  return ref


def run_parity(sched: Scheduler, ref) -> float:
  """Max abs difference of the samples after every step (model outputs computed on diffusers' samples)."""
  x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
  x_ref, x_jax, state = torch.from_numpy(x), jnp.asarray(x), sched.init(x)
  err = 0.0
  for i, t in enumerate(ref.timesteps):
    v = velocity(x_ref.numpy(), i, sched.sigmas[i])
    x_ref = ref.step(torch.from_numpy(v), t, x_ref, return_dict=False)[0]
    x_jax, state = sched.step(state, jnp.asarray(v), x_jax)
    err = max(err, float(np.abs(np.asarray(x_jax) - x_ref.numpy()).max()))
  assert int(state.step) == sched.num_steps
  assert np.isfinite(x_ref.numpy()).all()
  return err


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
@pytest.mark.parametrize("num_steps", [10, 30, 50])
@pytest.mark.parametrize("name", ["unipc", "euler"])
def test_schedule_matches_diffusers(name, num_steps, shift):
  sched, ref = make_scheduler(name, num_steps, shift), reference(name, num_steps, shift)
  timesteps = ref.timesteps.numpy()
  assert sched.timesteps.dtype == timesteps.dtype == (np.int64 if name == "unipc" else np.float32)
  np.testing.assert_array_equal(sched.timesteps, timesteps)
  assert sched.sigmas.dtype == np.float32
  np.testing.assert_array_equal(sched.sigmas, ref.sigmas.numpy())
  err = run_parity(sched, ref)
  print(f"{name} steps={num_steps} shift={shift}: max abs error {err:.2e}")
  assert err <= TOL


@pytest.mark.parametrize("name,num_steps,shift,options", [
    ("unipc", 12, 3.0, dict(solver_order=1)), ("unipc", 12, 3.0, dict(solver_order=3)),
    ("unipc", 2, 3.0, dict(solver_order=3)), ("unipc", 12, 3.0, dict(disable_corrector=[0, 3, 7])),
    ("unipc", 12, 3.0, dict(final_sigmas_type="sigma_min")),
    ("unipc", 12, 3.0, dict(final_sigmas_type="sigma_min", lower_order_final=False)),
    ("unipc", 12, 3.0, dict(final_sigmas_type="sigma_min", solver_type="bh1")),
    ("unipc", 1, 3.0, {}), ("unipc", 12, 3.3, {}), ("unipc", 12, 7.25, dict(num_train_timesteps=500)),
    ("euler", 1, 3.0, {}), ("euler", 12, 3.3, {}), ("euler", 12, 7.25, dict(num_train_timesteps=500))])
def test_options_match_diffusers(name, num_steps, shift, options):
  sched, ref = make_scheduler(name, num_steps, shift, **options), reference(name, num_steps, shift, **options)
  np.testing.assert_array_equal(sched.timesteps, ref.timesteps.numpy())
  np.testing.assert_array_equal(sched.sigmas, ref.sigmas.numpy())
  err = run_parity(sched, ref)
  print(f"{name} steps={num_steps} shift={shift} {options}: max abs error {err:.2e}")
  assert err <= TOL


@pytest.mark.parametrize("name", ["unipc", "euler"])
def test_straight_path_reaches_its_end(name):
  """Along a straight flow x_σ = (1 − σ)·x0 + σ·ε the true velocity ε − x0 takes both samplers to x0."""
  rng = np.random.default_rng(3)
  x0, eps = rng.standard_normal((2, *SHAPE)).astype(np.float32)
  sched = make_scheduler(name, 20, 3.0)
  x, state = jnp.asarray(eps), sched.init(eps)
  for _ in range(sched.num_steps):
    x, state = sched.step(state, eps - x0, x)
  np.testing.assert_allclose(np.asarray(x), x0, atol=1e-5)


@functools.partial(jax.jit, static_argnums=0)
def scan_sample(sched: Scheduler, x, model_outputs):
  """The whole loop as one lax.scan: scheduler static, step index traced; returns every step's sample."""
  def body(carry, v):
    x, state = carry
    x, state = sched.step(state, v, x)
    return (x, state), x
  return jax.lax.scan(body, (x, sched.init(x)), model_outputs)[1]


@pytest.mark.parametrize("name,num_steps,shift,options", [
    ("unipc", 10, 3.0, {}), ("unipc", 50, 5.0, {}), ("unipc", 9, 3.0, dict(solver_order=3)),
    ("unipc", 12, 3.0, dict(final_sigmas_type="sigma_min", lower_order_final=False)),
    ("euler", 10, 3.0, {}), ("euler", 50, 5.0, {})])
def test_scan_matches_eager_steps(name, num_steps, shift, options):
  """Jitted, XLA fuses a·x + b into one fused multiply-add, so agreement is to float32 rounding, not bitwise."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal(SHAPE).astype(np.float32))
  outputs = jnp.asarray(rng.standard_normal((num_steps, *SHAPE)).astype(np.float32))
  sched = make_scheduler(name, num_steps, shift, **options)
  scanned = scan_sample(sched, x, outputs)
  size = scan_sample._cache_size()
  scan_sample(make_scheduler(name, num_steps, shift, **options), x, outputs)  # equal settings: no recompilation
  assert scan_sample._cache_size() == size
  state, eager, err = sched.init(x), x, 0.0
  for i in range(num_steps):
    eager, state = sched.step(state, outputs[i], eager)
    err = max(err, float(jnp.abs(scanned[i] - eager).max()))
  print(f"{name} steps={num_steps} shift={shift} {options}: scan vs eager max abs error {err:.2e}")
  assert err <= SCAN_TOL and int(state.step) == num_steps


def test_step_keeps_sample_dtype():
  x = jnp.ones(SHAPE, jnp.bfloat16)
  for name in ("unipc", "euler"):
    sched = make_scheduler(name, 4, 3.0)
    prev, state = sched.step(sched.init(x), jnp.ones(SHAPE, jnp.float32), x)
    assert prev.dtype == jnp.bfloat16 and int(state.step) == 1
    assert jax.tree.map(lambda a: a.dtype, state) == jax.tree.map(lambda a: a.dtype, sched.init(x))


def test_wan_config():
  sched = scheduler_from_config(WAN_CONFIG, 50)
  assert sched == make_scheduler("unipc", 50, 3.0) and hash(sched) == hash(make_scheduler("unipc", 50, 3.0))
  ref = UniPCMultistepScheduler.from_config(WAN_CONFIG)
  ref.set_timesteps(50)
  np.testing.assert_array_equal(sched.timesteps, ref.timesteps.numpy())
  np.testing.assert_array_equal(sched.sigmas, ref.sigmas.numpy())
  assert scheduler_from_config(WAN_CONFIG, 30, shift=5.0) == make_scheduler("unipc", 30, 5.0)


def test_diffusers_saved_configs():
  """Configs as this diffusers version writes them (every field present) load to the same sampler."""
  unipc = dict(reference("unipc", 10, 5.0, solver_order=3).config, _class_name="UniPCMultistepScheduler")
  assert scheduler_from_config(unipc, 10) == make_scheduler("unipc", 10, 5.0, solver_order=3)
  euler = dict(reference("euler", 10, 5.0).config, _class_name="FlowMatchEulerDiscreteScheduler")
  assert scheduler_from_config(euler, 20) == make_scheduler("euler", 20, 5.0)
  assert scheduler_from_config(euler, 20, shift=2.0) == make_scheduler("euler", 20, 2.0)
  assert scheduler_from_config(dict(WAN_CONFIG, solver_type="midpoint"), 10).solver_type == "bh2"


@pytest.mark.parametrize("field,value", [
    ("use_flow_sigmas", False), ("use_flow_sigmas", None), ("prediction_type", "epsilon"),
    ("prediction_type", "v_prediction"), ("thresholding", True), ("use_karras_sigmas", True),
    ("use_exponential_sigmas", True), ("use_beta_sigmas", True), ("use_dynamic_shifting", True),
    ("shift_terminal", 0.1), ("solver_order", 4), ("solver_order", 0), ("predict_x0", False),
    ("solver_type", "bh3"), ("final_sigmas_type", "sigma_max"), ("flow_shift", -1.0), ("flow_shift", "3"),
    ("disable_corrector", [-1]), ("timestep_spacing", "random"), ("num_train_timesteps", 0),
    ("lower_order_final", False), ("solver_type", "bh1"), ("solver_p", {"_class_name": "DDIMScheduler"})])
def test_unipc_config_refused(field, value):
  with pytest.raises(ValueError, match=field):
    scheduler_from_config(dict(WAN_CONFIG, **{field: value}), 10)


def test_unipc_config_defaults_refused():
  """A field missing from the config takes diffusers' default: UniPC defaults to epsilon prediction."""
  config = {k: v for k, v in WAN_CONFIG.items() if k != "prediction_type"}
  with pytest.raises(ValueError, match="prediction_type='epsilon'"):
    scheduler_from_config(config, 10)
  with pytest.raises(ValueError, match="use_flow_sigmas"):
    scheduler_from_config({k: v for k, v in WAN_CONFIG.items() if k != "use_flow_sigmas"}, 10)


@pytest.mark.parametrize("field,value", [
    ("use_dynamic_shifting", True), ("invert_sigmas", True), ("stochastic_sampling", True),
    ("shift_terminal", 0.2), ("use_karras_sigmas", True), ("use_beta_sigmas", True), ("shift", 0)])
def test_euler_config_refused(field, value):
  config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 5.0, field: value}
  with pytest.raises(ValueError, match=field):
    scheduler_from_config(config, 10)


@pytest.mark.parametrize("config", [{}, {"_class_name": "DDIMScheduler"},
                                    {"_class_name": "DPMSolverMultistepScheduler", "use_flow_sigmas": True}])
def test_unknown_scheduler_class_refused(config):
  with pytest.raises(ValueError, match="_class_name"):
    scheduler_from_config(config, 10)


@pytest.mark.parametrize("args,options,match", [
    (("ddim", 10, 3.0), {}, "name"), (("unipc", 0, 3.0), {}, "num_steps"),
    (("euler", 2.5, 3.0), {}, "num_steps"), (("unipc", 10, 0.0), {}, "shift"),
    (("euler", 10, float("nan")), {}, "shift"), (("euler", 10, 3.0), dict(solver_order=3), "solver_order"),
    (("unipc", 10, 3.0), dict(solver_order=4), "solver_order"),
    (("unipc", 10, 3.0), dict(disable_corrector=[1.5]), "disable_corrector"),
    (("unipc", 10, 3.0), dict(lower_order_final=False), "lower_order_final"),
    (("unipc", 10, 3.0), dict(solver_type="bh1"), "bh1")])
def test_bad_arguments_refused(args, options, match):
  with pytest.raises(ValueError, match=match):
    make_scheduler(*args, **options)
