"""DeepMind Control Suite tasks as gymnasium envs, with the protocols of the papers this project follows.

``make_dmc("cheetah-run", seed)`` gives flat float32 state observations (SAC, primacy-bias setting);
``make_dmc("cheetah-run", seed, pixels=True)`` gives 84×84 RGB frames stacked along the channel axis
(DrQ setting). Every episode is the suite's 1,000 environment steps = ``1000 / action_repeat`` agent
steps; its end is ``truncated=True, terminated=False`` (no suite task used here terminates early).

Action repeat (``action_repeat=None``):
  * states → 1, as the primacy-bias SAC runs (rl_with_resets ``train_dense.py`` builds its env with
    ``continuous_control/utils.py: make_env(..., action_repeat=1)``);
  * pixels → the PlaNet per-task table that DrQ and the primacy-bias DrQ runs use, 2 for any other
    task (rl_with_resets ``train_pixels.py``: ``PLANET_ACTION_REPEAT.get(env_name, 2)``; DrQ paper,
    PlaNet benchmark: cartpole-swingup 8, reacher-easy / cheetah-run / ball_in_cup-catch 4,
    finger-spin / walker-walk 2; the Dreamer benchmark uses 2).
The reward of an agent step is the sum of the rewards of its repeated environment steps.

Pixels: camera 2 for quadruped and 0 otherwise (DrQ ``train.py``, after Dreamer); channels first,
``frame_stack`` frames concatenated along channels, oldest first; at reset the first frame is repeated
to fill the stack (DrQ ``utils.FrameStack``).

Rendering runs headless. ``render_backend`` picks MuJoCo's OpenGL backend (``MUJOCO_GL``): ``"egl"``
(default; GPU drivers or Mesa's llvmpipe on CPUs), ``"osmesa"`` (software; ``apt-get install
libosmesa6``) or ``"glfw"`` (needs a display). dm_control reads the choice once, when it is first
imported, so it is fixed for the whole process; this module sets it before importing dm_control.
A state-only env with no ``MUJOCO_GL`` set uses EGL where libEGL is installed and otherwise switches
rendering off (``MUJOCO_GL=disable``), so state-only runs need no GL library.
``fast_render=True`` turns off shadows and multisample anti-aliasing and shrinks the offscreen buffer
to the image size (about 5× faster on a CPU); the frames then differ slightly from the papers' (default
MuJoCo look), so use ``fast_render=False`` to reproduce published pixel results exactly.
"""

from __future__ import annotations

import ctypes.util
import difflib
import logging
import os
import sys
from collections import OrderedDict
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.wrappers import FrameStackObservation, RecordEpisodeStatistics, ReshapeObservation

__all__ = [
    "DMCEnv",
    "PLANET_ACTION_REPEAT",
    "RENDER_BACKENDS",
    "default_action_repeat",
    "dmc_tasks",
    "make_dmc",
]

# rl_with_resets train_pixels.py (PlaNet benchmark, Hafner et al. 2019; DrQ, Kostrikov et al. 2020).
PLANET_ACTION_REPEAT: dict[str, int] = {
    "cartpole-swingup": 8,
    "reacher-easy": 4,
    "cheetah-run": 4,
    "finger-spin": 2,
    "ball_in_cup-catch": 4,
    "walker-walk": 2,
}
DEFAULT_PIXEL_ACTION_REPEAT = 2  # rl_with_resets train_pixels.py: PLANET_ACTION_REPEAT.get(env_name, 2)
STATE_ACTION_REPEAT = 1  # rl_with_resets train_dense.py (primacy-bias SAC on states)

RENDER_BACKENDS: tuple[str, ...] = ("egl", "osmesa", "glfw")

# lqr has no time limit and unbounded actions: outside the 1000-step, [-1, 1] protocol.
_UNSUPPORTED_DOMAINS = frozenset({"lqr"})

_BACKEND_FIX = {
    "egl": (
        "EGL could not start. Install an EGL runtime (Debian/Ubuntu: `apt-get install libegl1 libegl-mesa0` "
        "for CPU rendering with Mesa; NVIDIA's driver ships libEGL on GPUs), or use render_backend='osmesa' "
        "(`apt-get install libosmesa6`)."
    ),
    "osmesa": (
        "OSMesa could not start. Install it (`apt-get install libosmesa6`), or use render_backend='egl' "
        "(`apt-get install libegl1 libegl-mesa0`)."
    ),
    "glfw": (
        "GLFW could not start: it needs a display (X11/Wayland). On a headless machine use "
        "render_backend='egl' (or 'osmesa')."
    ),
}


# ----------------------------------------------------------------------------------------------
# Rendering backend and dm_control import
# ----------------------------------------------------------------------------------------------


def _active_backend() -> str | None:
    """The backend dm_control chose at import, or None if dm_control's renderer is not imported yet."""
    render_module = sys.modules.get("dm_control._render")
    return None if render_module is None else getattr(render_module, "BACKEND", None)


_NO_RENDERER_NAMES = frozenset({"off", "disable", "disabled", "false", "0"})


def _default_backend(pixels: bool) -> str:
    """EGL, unless this is a state-only env on a machine without libEGL: then rendering is switched off,
    so that state-only runs need no GL library at all (dm_control would otherwise fail importing EGL)."""
    if pixels or ctypes.util.find_library("EGL") is not None:
        return "egl"
    return "disable"


def _select_backend(render_backend: str | None, pixels: bool) -> str | None:
    """Set MUJOCO_GL / PYOPENGL_PLATFORM before dm_control is imported; check it after.

    Returns the backend pixels will render with (None for state-only envs that leave it to dm_control).
    """
    if isinstance(render_backend, str):
        render_backend = render_backend.lower()
    if render_backend is not None and render_backend not in RENDER_BACKENDS:
        raise ValueError(f"render_backend must be one of {RENDER_BACKENDS} or None, got {render_backend!r}")
    env_backend = os.environ.get("MUJOCO_GL") or None
    requested = render_backend or env_backend or _default_backend(pixels)
    active = _active_backend()
    if active is not None:
        if pixels and active in _NO_RENDERER_NAMES:
            raise RuntimeError(
                "MuJoCo rendering is switched off in this process: dm_control was first imported with "
                f"MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} (set by a state-only DMC env on a machine "
                "without libEGL, or by you), and it fixes the backend at import. Set MUJOCO_GL=egl or "
                "MUJOCO_GL=osmesa before creating any env."
            )
        if pixels and requested != active:
            raise RuntimeError(
                f"dm_control already chose the MuJoCo rendering backend {active!r} when it was first "
                f"imported in this process (MUJOCO_GL is read once, at import), so "
                f"render_backend={requested!r} cannot take effect. Pass render_backend={active!r}, or set "
                f"MUJOCO_GL={requested} before anything imports dm_control."
            )
        return active if pixels else None
    if pixels and requested not in RENDER_BACKENDS:
        raise ValueError(
            f"MUJOCO_GL={requested!r} cannot render pixels; use one of {RENDER_BACKENDS} "
            f"(render_backend argument or MUJOCO_GL)"
        )
    if render_backend is not None or env_backend is None:
        os.environ["MUJOCO_GL"] = requested
        if requested in ("egl", "osmesa"):
            # PyOpenGL picks its platform once, from this variable; dm_control's EGL module refuses others.
            os.environ["PYOPENGL_PLATFORM"] = requested
    return requested if pixels else None


class _DropSetTotalMassWarning(logging.Filter):
    """Drops MuJoCo ≥ 3.3's deprecation warning for the ``settotalmass`` compiler attribute, which
    dm-control's own suite XML files use (cheetah, walker, ...): dm-control routes MuJoCo's warnings to the
    ``absl`` logger, so every env would print it. Only that one known message is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("compiler attribute 'settotalmass' is deprecated")


def _import_suite(backend: str | None) -> Any:
    """Import dm_control.suite, turning a backend that cannot load into an error that names the fix."""
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _DropSetTotalMassWarning) for f in absl_logger.filters):
        absl_logger.addFilter(_DropSetTotalMassWarning())
    try:
        from dm_control import suite
    except Exception as exc:  # the GL libraries fail in many ways (ImportError, AttributeError, OSError)
        name = backend or os.environ.get("MUJOCO_GL", "")
        fix = _BACKEND_FIX.get(name, "Set MUJOCO_GL to 'egl' or 'osmesa' (or 'disable' for state-only runs).")
        raise RuntimeError(
            f"dm_control could not be imported with MUJOCO_GL={name!r}: {type(exc).__name__}: {exc}. {fix} "
            f"State-only runs also work with MUJOCO_GL=disable. The backend is fixed once dm_control is "
            f"imported: restart Python after changing it."
        ) from exc
    return suite


def dmc_tasks() -> tuple[str, ...]:
    """Every supported ``domain-task`` name of the dm-control suite (imports dm_control)."""
    suite = _import_suite(_select_backend(None, pixels=False))
    return tuple(f"{d}-{t}" for d, t in suite.ALL_TASKS if d not in _UNSUPPORTED_DOMAINS)


def _parse_task(task: str, suite: Any) -> tuple[str, str]:
    if not isinstance(task, str):
        raise TypeError(f"task must be a 'domain-task' str such as 'cheetah-run', got {type(task).__name__}")
    known = {f"{d}-{t}": (d, t) for d, t in suite.ALL_TASKS if d not in _UNSUPPORTED_DOMAINS}
    if task in known:
        return known[task]
    close = difflib.get_close_matches(task, list(known), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else f" Known tasks: {', '.join(sorted(known))}."
    raise ValueError(f"Unknown DMC task {task!r} (expected 'domain-task', e.g. 'cheetah-run').{hint}")


def default_action_repeat(task: str, pixels: bool) -> int:
    """The action repeat ``make_dmc`` uses when ``action_repeat=None`` (see the module docstring)."""
    if not pixels:
        return STATE_ACTION_REPEAT
    return PLANET_ACTION_REPEAT.get(task, DEFAULT_PIXEL_ACTION_REPEAT)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


# ----------------------------------------------------------------------------------------------
# The environment
# ----------------------------------------------------------------------------------------------


class DMCEnv(gym.Env):
    """One dm-control suite task with action repeat, as a gymnasium env (single frame for pixels).

    Use :func:`make_dmc`, which validates the arguments, selects the rendering backend and adds frame
    stacking and episode statistics. Observations: float32 flat state, or uint8 ``(3, size, size)``.
    Actions: float32 in ``[-1, 1]``, rescaled linearly to the task's bounds (identity for all suite tasks
    but quadruped), after clipping to ``[-1, 1]``.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        suite: Any,
        domain: str,
        task: str,
        seed: int,
        *,
        pixels: bool,
        action_repeat: int,
        image_size: int,
        camera_id: int,
        fast_render: bool,
    ):
        self._suite = suite
        self._domain, self._task = domain, task
        self._pixels = pixels
        self._action_repeat = action_repeat
        self._image_size = image_size
        self._camera_id = camera_id
        self._fast_render = fast_render
        self._seed = seed
        self._needs_reset = True
        self._has_reset = False
        self._load(seed)

        spec = self._env.action_spec()
        self._action_low = np.asarray(spec.minimum, dtype=np.float64)
        self._action_high = np.asarray(spec.maximum, dtype=np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, shape=spec.shape, dtype=np.float32)
        if pixels:
            ncam = self._env.physics.model.ncam
            if not -1 <= camera_id < ncam:
                raise ValueError(
                    f"camera_id {camera_id} does not exist in {domain}-{task}: allowed -1 (free camera) "
                    f"to {ncam - 1}"
                )
            self.observation_space = spaces.Box(0, 255, shape=(3, image_size, image_size), dtype=np.uint8)
            self._probe_render()
        else:
            dim = sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values())
            self.observation_space = spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32)
        self.action_space.seed(seed)

    @property
    def physics(self) -> Any:
        """The dm_control Physics of the current episode (for inspection and tests)."""
        return self._env.physics

    @property
    def action_repeat(self) -> int:
        """Environment steps per agent step."""
        return self._action_repeat

    def random_state(self) -> dict:
        """State of the task's RNG, which draws each episode's initial state (save it to resume exactly),
        as plain Python values (NumPy's dict form with the key as a list: loads with weights_only)."""
        state = self._env.task.random.get_state(legacy=False)
        state["state"]["key"] = state["state"]["key"].tolist()
        return state

    def set_random_state(self, state: dict | tuple) -> None:
        """Restore :meth:`random_state`; the next ``reset()`` then starts the episode it would have."""
        if isinstance(state, dict):
            key = np.asarray(state["state"]["key"], dtype=np.uint32)
            state = dict(state, state=dict(state["state"], key=key))
        self._env.task.random.set_state(state)

    def _load(self, seed: int) -> None:
        self._env = self._suite.load(self._domain, self._task, task_kwargs={"random": seed})
        if self._pixels:
            self._configure_rendering()

    def _configure_rendering(self) -> None:
        """Set the offscreen buffer (and the fast settings) before the first render creates the context."""
        model = self._env.physics.model
        if self._fast_render:
            # machine.md: ≈ 5× faster on CPU; shadows and anti-aliasing off, so frames differ slightly.
            model.vis.quality.shadowsize = 0
            model.vis.quality.offsamples = 0
            model.vis.global_.offwidth = self._image_size
            model.vis.global_.offheight = self._image_size
        else:
            # Keep the default look; only make sure the buffer can hold the requested image.
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, self._image_size)
            model.vis.global_.offheight = max(model.vis.global_.offheight, self._image_size)

    def _probe_render(self) -> None:
        try:
            self._render()
        except Exception as exc:  # mujoco.FatalError, RuntimeError, GL errors
            backend = _active_backend() or os.environ.get("MUJOCO_GL", "")
            fix = _BACKEND_FIX.get(backend, "Set MUJOCO_GL to 'egl' or 'osmesa' before starting Python.")
            raise RuntimeError(
                f"Rendering {self._domain}-{self._task} pixels with MUJOCO_GL={backend!r} failed: "
                f"{type(exc).__name__}: {exc}. {fix}"
            ) from exc

    def _render(self) -> np.ndarray:
        frame = self._env.physics.render(
            height=self._image_size, width=self._image_size, camera_id=self._camera_id
        )
        return np.ascontiguousarray(frame.transpose(2, 0, 1))

    def _observe(self, observation: OrderedDict) -> np.ndarray:
        if self._pixels:
            return self._render()
        parts = [np.asarray(value, dtype=np.float64).ravel() for value in observation.values()]
        return np.concatenate(parts).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode; ``seed`` re-seeds the task (the first reset uses the factory seed)."""
        super().reset(seed=seed)
        if seed is not None and (self._has_reset or seed != self._seed):
            self._seed = seed
            self._load(seed)
            self.action_space.seed(seed)
        time_step = self._env.reset()
        self._has_reset = True
        self._needs_reset = False
        return self._observe(time_step.observation), {}

    def step(self, action: np.ndarray):
        """Repeat ``action`` for ``action_repeat`` environment steps; the reward is their sum."""
        if self._needs_reset:
            raise RuntimeError(
                "DMCEnv.step() called before reset() or after the episode ended; call reset()."
            )
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {action.shape}")
        scaled = self._action_low + (np.clip(action, -1.0, 1.0) + 1.0) * 0.5 * (
            self._action_high - self._action_low
        )
        reward = 0.0
        for _ in range(self._action_repeat):
            time_step = self._env.step(scaled)
            reward += float(time_step.reward or 0.0)
            if time_step.last():
                break
        terminated = bool(time_step.last() and time_step.discount == 0.0)
        truncated = bool(time_step.last() and not terminated)
        self._needs_reset = terminated or truncated
        return self._observe(time_step.observation), reward, terminated, truncated, {}


def make_dmc(
    task: str,
    seed: int,
    *,
    pixels: bool = False,
    action_repeat: int | None = None,
    frame_stack: int = 3,
    image_size: int = 84,
    camera_id: int | None = None,
    render_backend: str | None = None,
    fast_render: bool = True,
) -> gym.Env:
    """A dm-control suite task by ``domain-task`` name (``'cheetah-run'``, ``'ball_in_cup-catch'``).

    Args:
        task: ``domain-task``; an unknown name raises ValueError with the closest known tasks.
        seed: the task's random seed (initial states) and the action space's; the first ``reset()``
            without a seed uses it, and ``reset(seed=s)`` re-seeds.
        pixels: RGB pixels instead of the flat state vector.
        action_repeat: environment steps per agent step (rewards summed); None → 1 for states, the
            PlaNet per-task value (2 otherwise) for pixels; see the module docstring.
        frame_stack: frames per pixel observation (DrQ: 3); ignored for states.
        image_size: side of the square pixel frame (84 in DrQ).
        camera_id: None → 2 for quadruped, 0 otherwise.
        render_backend: ``'egl'``, ``'osmesa'`` or ``'glfw'``; None → ``MUJOCO_GL`` if set, else EGL.
        fast_render: faster, slightly different pixels (no shadows, no anti-aliasing); False keeps the
            papers' look.

    Returns:
        A gymnasium env: states ``float32 (dim,)``, pixels ``uint8 (3 * frame_stack, size, size)``;
        actions ``Box(-1, 1, (action_dim,), float32)``; the 1000-step limit as ``truncated``;
        ``info["episode"]`` at the end of each episode.
    """
    if not isinstance(pixels, bool):
        raise TypeError(f"pixels must be a bool, got {pixels!r}")
    if not isinstance(fast_render, bool):
        raise TypeError(f"fast_render must be a bool, got {fast_render!r}")
    seed = _check_int("seed", seed, 0)
    if action_repeat is not None:
        action_repeat = _check_int("action_repeat", action_repeat, 1)
    frame_stack = _check_int("frame_stack", frame_stack, 1)
    image_size = _check_int("image_size", image_size, 1)
    if camera_id is not None:
        camera_id = _check_int("camera_id", camera_id, -1)

    suite = _import_suite(_select_backend(render_backend, pixels))
    domain, task_name = _parse_task(task, suite)
    if action_repeat is None:
        action_repeat = default_action_repeat(task, pixels)
    if camera_id is None:
        camera_id = 2 if domain == "quadruped" else 0  # DrQ train.py, after Dreamer

    env: gym.Env = DMCEnv(
        suite,
        domain,
        task_name,
        seed,
        pixels=pixels,
        action_repeat=action_repeat,
        image_size=image_size,
        camera_id=camera_id,
        fast_render=fast_render,
    )
    if pixels:
        env = FrameStackObservation(env, frame_stack, padding_type="reset")
        env = ReshapeObservation(env, (3 * frame_stack, image_size, image_size))
    return RecordEpisodeStatistics(env)
