"""A subject (body-frame anatomy, tissue values, lesions), its scan sessions, and the solids of a session."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from umd_lightning.data.synthetic.shapes import _F32, Ellipsoid, Shape, Structure, TissueFn, Tube, Union, rotation_matrix
from umd_lightning.data.synthetic.tissues import CT_HU, MRI_T1, PET_SUV, TISSUES, T, _PET_LOG_UNIFORM, _PET_PER_SESSION, _draw_values
from umd_lightning.organs import UMD13


@dataclass
class Lesion:
    center: np.ndarray  # body frame, mm
    diameter_mm: float
    suv: float
    host: str


@dataclass
class Subject:
    """Everything drawn once per subject (body-frame anatomy and tissue values)."""

    index: int
    body_scale: np.ndarray
    fat_mm: float
    muscle_mm: float
    profile: np.ndarray  # (K, 4): z, half-width x, half-width y, centre y
    head: Ellipsoid
    head_layers: tuple[float, float]  # scalp, skull (mm)
    shapes: dict[str, Shape]
    extra: dict[str, object]
    ct_hu: np.ndarray
    mri_t1: np.ndarray
    pet_suv: np.ndarray
    lesions: list[Lesion] = field(default_factory=list)

    @property
    def profile_table(self) -> tuple[float, np.ndarray]:
        """The body outline at 1 mm steps in z: ``(z0, (N, 5) float32)``.

        Columns: 1 / half-width x, 1 / half-width y, centre y, fat depth, fat + muscle depth.
        """
        p = self.profile[::-1]
        z = np.arange(np.floor(p[0, 0]), np.ceil(p[-1, 0]) + 1) + 0.5
        a, b, yc = (np.interp(z, p[:, 0], p[:, i]) for i in (1, 2, 3))
        # Thinner fat and muscle around the neck.
        f = np.clip(np.minimum(a, b) / 110, 0.4, 1.0)
        table = np.stack([1 / a, 1 / b, yc, self.fat_mm * f, (self.fat_mm + self.muscle_mm) * f], axis=1)
        return float(z[0] - 0.5), table.astype(np.float32)


@dataclass
class Pose:
    """World = R @ body + t, after a smooth displacement ``u(world)`` (world mm -> mm)."""

    rotation: np.ndarray
    shift: np.ndarray
    modes: list[tuple[int, float, np.ndarray, np.ndarray]]  # (component, amplitude, k (3,), phase (3,))

    @property
    def max_displacement(self) -> float:
        per_comp = np.zeros(3)
        for comp, amp, _, _ in self.modes:
            per_comp[comp] += abs(amp)
        return float(np.linalg.norm(per_comp))

    def to_world(self, p: np.ndarray) -> np.ndarray:
        """Body -> world for points ``(N, 3)``, ignoring the (few-mm) deformation."""
        return p @ self.rotation.T + self.shift


@dataclass
class Session:
    name: str
    pose: Pose
    bladder_fill: float
    stomach_gas_mm: float
    colon_content: np.ndarray  # tissue id per colon segment (lumen)
    colon_wall: np.ndarray  # tissue id per colon segment (wall)
    pet_suv: np.ndarray
    pet_noise: float
    mri_bias: float
    mri_noise: float
    ct_noise_hu: float


#: Body outline in the reference body frame: z, half-width x, half-width y, centre y (mm).
_PROFILE = np.array([
    [240, 56, 58, -6], [200, 60, 62, -8], [180, 150, 100, -5], [160, 168, 110, 0], [60, 165, 115, 0],
    [-40, 158, 115, 0], [-130, 152, 112, 3], [-240, 168, 112, 0], [-330, 172, 108, -5], [-480, 160, 100, -5],
], dtype=np.float64)  # fmt: skip
_TRUNK_TOP = 235.0
_HEAD = ((0.0, 0.0, 325.0), (76.0, 92.0, 100.0))
_HEAD_TOP = 425.0

#: Shapes that draw a size/position jitter each (order fixed: it is the draw order).
_JITTERED = (
    "heart", "lung_right", "lung_left", "liver", "spleen", "kidney_left", "kidney_right", "pancreas", "stomach",
    "esophagus", "aorta", "colon", "urinary_bladder", "spine", "airway", "small_bowel",
)  # fmt: skip


def draw_subject(index: int, rng: np.random.Generator, lesion_range: tuple[int, int]) -> Subject:
    """Draw one subject's anatomy and tissue values from its own generator.

    Args:
        index: subject index (kept in the result; the draws depend only on ``rng``).
        rng: the subject's generator.
        lesion_range: inclusive range of the number of hot lesions.

    Returns:
        The subject: body-frame shapes (reference anatomy scaled by body size, each organ jittered
        in size by about +-11 % and in position by up to 7 mm), tissue values per modality, lesions.
    """
    sx = rng.uniform(0.92, 1.08)
    bs = np.array([sx, sx * rng.uniform(0.95, 1.05), rng.uniform(0.96, 1.04)])
    fat_mm, muscle_mm = rng.uniform(10, 26), rng.uniform(8, 14)
    head_scale = rng.uniform(0.95, 1.05)
    jit: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in _JITTERED:
        size = (1 + rng.uniform(-0.11, 0.11)) * (1 + rng.uniform(-0.04, 0.04, 3))
        jit[name] = (size, rng.uniform(-7, 7, 3))
    point_jitter = rng.uniform(-3, 3, (64, 3))

    def ell(name: str, c, r, rot=None, key: str | None = None) -> Ellipsoid:
        size, shift = jit[key or name]
        return Ellipsoid(np.asarray(c) * bs + shift, np.asarray(r) * bs * size,
                         None if rot is None else rotation_matrix(rot))  # fmt: skip

    def tube(name: str, pts, radii, key: str | None = None, wobble: bool = True) -> Tube:
        size, shift = jit[key or name]
        pts = np.asarray(pts, dtype=np.float64) * bs + shift
        if wobble:
            pts = pts + point_jitter[: len(pts)]
        return Tube(pts, np.asarray(radii, dtype=np.float64) * size.mean())

    def mirror(points, sign):
        return [(sign * x, y, z) for x, y, z in points]

    s: dict[str, Shape] = {}
    hc = np.asarray(_HEAD[0]) * bs
    hr = np.asarray(_HEAD[1]) * head_scale
    head = Ellipsoid(hc, hr)
    scalp, skull = rng.uniform(4, 7), rng.uniform(6, 8)
    s["brain"] = Ellipsoid(hc, hr - scalp - skull - 3.0)
    s["ventricles"] = Union(
        Ellipsoid(hc + np.array([9, -4, 8]) * head_scale, np.array([6, 24, 12]) * head_scale),
        Ellipsoid(hc + np.array([-9, -4, 8]) * head_scale, np.array([6, 24, 12]) * head_scale),
    )
    # Deep grey matter (basal ganglia, thalami) beside the ventricles.
    s["deep_grey"] = Union(
        Ellipsoid(hc + np.array([24, 0, -2]) * head_scale, np.array([11, 22, 13]) * head_scale),
        Ellipsoid(hc + np.array([-24, 0, -2]) * head_scale, np.array([11, 22, 13]) * head_scale),
    )
    s["heart"] = ell("heart", (-15, 35, 58), (55, 45, 51), rot=(0, 20, -30))
    s["lung_right"] = ell("lung_right", (78, -5, 68), (64, 88, 115))
    s["lung_left"] = ell("lung_left", (-80, -5, 72), (60, 88, 112))
    s["liver"] = Union(
        ell("liver", (60, 8, -42), (85, 82, 62)),
        ell("liver", (-15, 45, -28), (55, 32, 35), rot=(0, 0, 10)),
    )
    s["spleen"] = ell("spleen", (-88, -28, -22), (28, 45, 50), rot=(0, 0, 25))
    kr = ell("kidney_right", (75, -45, -120), (28, 24, 55), rot=(0, -10, 0))
    kl = ell("kidney_left", (-75, -45, -105), (28, 24, 55), rot=(0, 10, 0))
    s["kidney_right"], s["kidney_left"] = kr, kl
    s["pelvis_right"] = Ellipsoid(kr.c + np.array([-12, 6, 0]), np.array([9, 9, 24]) * kr.r[2] / 55)
    s["pelvis_left"] = Ellipsoid(kl.c + np.array([12, 6, 0]), np.array([9, 9, 24]) * kl.r[2] / 55)
    s["pancreas"] = tube("pancreas", [(30, 5, -122), (5, 14, -112), (-35, 6, -102), (-68, -8, -90)], [15, 11, 10, 9])
    s["stomach"] = Union(
        ell("stomach", (-55, 22, -35), (44, 38, 50), rot=(0, 15, 20)),
        tube("stomach", [(-40, 42, -75), (-12, 50, -88), (10, 42, -92)], [17, 15, 13], wobble=False),
    )
    s["esophagus"] = tube(
        "esophagus",
        [(3, -4, 212), (3, -8, 160), (6, -22, 110), (8, -24, 60), (6, -20, 20), (-8, -10, -10), (-30, 4, -25)],
        [9, 9, 9, 9, 9, 10, 11],
    )
    s["aorta"] = tube(
        "aorta",
        [(3, 36, 95), (5, 42, 135), (-5, 46, 158), (-26, 28, 166), (-34, 0, 158), (-28, -26, 140),
         (-24, -34, 100), (-22, -32, 40), (-20, -20, -40), (-15, -12, -150), (-10, -8, -190)],
        [14, 14, 13, 12, 12, 11, 11, 11, 10, 9, 9],
    )  # fmt: skip
    s["colon"] = tube(
        "colon",
        [(92, 15, -250), (92, 10, -165), (82, 40, -152), (35, 62, -172), (-20, 64, -172), (-72, 45, -138),
         (-96, 12, -122), (-96, 10, -205), (-80, 12, -262), (-35, 20, -272), (-12, -30, -305), (0, -58, -342),
         (0, -62, -400)],
        [25, 22, 21, 21, 21, 21, 21, 20, 20, 19, 19, 20, 20],
    )  # fmt: skip
    # Small bowel: unlabelled fluid-filled loops inside the colon frame.
    s["small_bowel"] = tube(
        "small_bowel",
        [(-45, 25, -192), (45, 30, -195), (45, 8, -212), (-45, 12, -216), (-45, 40, -232), (45, 45, -236),
         (40, 15, -252), (10, 18, -255)],
        [12] * 8,
    )  # fmt: skip
    s["urinary_bladder"] = ell("urinary_bladder", (0, 40, -330), (45, 38, 35))
    spine_pts = [(0, -26, 255), (0, -30, 205), (0, -40, 175), (0, -52, 140), (0, -56, 60), (0, -50, -30),
                 (0, -42, -130), (0, -46, -200), (0, -62, -250), (0, -80, -295)]  # fmt: skip
    spine_r = [12, 13, 15, 16, 17, 20, 22, 23, 24, 22]
    s["spine"] = tube("spine", spine_pts, spine_r, wobble=False)
    post = [(x, y - r - 13, z) for (x, y, z), r in zip(spine_pts[:-1], spine_r[:-1])]
    s["posterior"] = tube("spine", post, [10, 10, 11, 12, 12, 13, 13, 13, 13], wobble=False)
    s["trachea"] = tube("airway", [(0, 18, 215), (0, 16, 170), (0, 14, 125)], [9, 9, 9], wobble=False)
    s["bronchus_right"] = tube("airway", [(0, 14, 125), (25, 8, 108)], [6, 6], wobble=False)
    s["bronchus_left"] = tube("airway", [(0, 14, 125), (-28, 6, 102)], [6, 6], wobble=False)
    for side, sign in (("right", 1), ("left", -1)):
        s[f"paraspinal_{side}"] = Tube(
            np.array(mirror([(38, -84, 190), (38, -88, 100), (40, -86, 0), (42, -82, -120), (45, -88, -220)], sign)) * bs,
            [20, 24, 26, 28, 24],
        )
        s[f"psoas_{side}"] = Tube(
            np.array(mirror([(30, -40, -80), (40, -32, -160), (52, -24, -235), (70, -14, -310), (84, -5, -360)], sign)) * bs,
            [6, 14, 19, 17, 14],
        )
        s[f"iliac_{side}"] = Ellipsoid(np.array([sign * 112, -58, -258]) * bs, np.array([16, 45, 55]) * bs)
        s[f"femur_{side}"] = Union(
            Ellipsoid(np.array([sign * 88, 2, -372]) * bs, np.full(3, 24.0) * bs.mean()),
            Tube(np.array([(sign * 88, 2, -372), (sign * 118, 8, -420), (sign * 122, 8, -500)]) * bs, [18, 16, 15]),
        )
        s[f"pubis_{side}"] = Tube(np.array([(sign * 78, 25, -382), (sign * 8, 60, -390)]) * bs, [11, 10])
    s["sternum"] = Tube(np.array([(0, 98, 160), (0, 104, 40)]) * bs, [11, 10])

    ct_hu = _draw_values(rng, CT_HU)
    mri_t1 = _draw_values(rng, MRI_T1)
    pet_suv = _draw_values(rng, PET_SUV, log=_PET_LOG_UNIFORM)
    extra = {"myocardium_mm": float(rng.uniform(8, 12)), "grey_mm": float(rng.uniform(5, 7))}
    profile = _PROFILE.copy()
    profile[:, 0] *= bs[2]
    profile[:, 1] *= bs[0]
    profile[:, 2:] *= bs[1]
    subject = Subject(
        index=index, body_scale=bs, fat_mm=float(fat_mm), muscle_mm=float(muscle_mm), profile=profile,
        head=head, head_layers=(float(scalp), float(skull)), shapes=s, extra=extra, ct_hu=ct_hu,
        mri_t1=mri_t1, pet_suv=pet_suv,
    )  # fmt: skip
    subject.lesions = _draw_lesions(rng, subject, lesion_range)
    return subject


def _draw_lesions(rng: np.random.Generator, subject: Subject, lesion_range: tuple[int, int]) -> list[Lesion]:
    """Hot spheres in liver, lungs, spleen, bone or lymph nodes beside the aorta."""
    hosts = ("liver", "lung_right", "lung_left", "spine", "spleen", "node")
    structures = {st.name: st for st in _structures(subject, None)}
    lesions = []
    for _ in range(int(rng.integers(lesion_range[0], lesion_range[1] + 1))):
        host = str(rng.choice(hosts))
        diameter = float(rng.uniform(5, 30))
        suv = float(rng.uniform(4, 20))
        if host == "node":
            aorta = subject.shapes["aorta"]
            k = int(rng.integers(6, len(aorta.p) - 1))
            center = aorta.p[k] + np.array([rng.choice([-1, 1]) * (aorta.r[k] + 6 + diameter / 2), 0, 0])
        else:
            st = structures[host]
            lo, hi = st.shape.lo, st.shape.hi
            pts = rng.uniform(lo, hi, (256, 3))
            d = st.point_distance(pts)
            ok = np.flatnonzero(d < -diameter / 2 - 2)
            center = pts[ok[0]] if ok.size else pts[int(np.argmin(d))]
        lesions.append(Lesion(center=np.asarray(center, dtype=np.float64), diameter_mm=diameter, suv=suv, host=host))
    return lesions


def draw_session(name: str, rng: np.random.Generator, subject: Subject, deformation_mm: tuple[float, float]) -> Session:
    """Pose, deformation and the session-specific contents (bladder, bowel, uptake).

    Args:
        name: ``petct`` (pose near the scanner axes) or ``petmri`` (rotated 2-5 degrees, shifted 12-30 mm).
        rng: the session's generator.
        subject: the subject scanned.
        deformation_mm: range of the smooth deformation's amplitude.
    """
    if name == "petct":
        rot = rotation_matrix(rng.uniform(-2, 2, 3))
        shift = rng.uniform(-10, 10, 3)
    else:
        axis = rng.normal(size=3) * np.array([0.5, 0.5, 1.0])
        axis /= np.linalg.norm(axis)
        angle = np.deg2rad(rng.uniform(2, 5))
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
        direction = rng.normal(size=3)
        shift = direction / np.linalg.norm(direction) * rng.uniform(12, 30)
    amplitude = rng.uniform(*deformation_mm)
    modes = []
    for comp in range(3):
        for _ in range(2):
            modes.append((comp, float(amplitude / 2 * rng.uniform(0.5, 1.0)),
                          2 * np.pi / rng.uniform(250, 600, 3), rng.uniform(0, 2 * np.pi, 3)))  # fmt: skip
    n_colon = len(subject.shapes["colon"].p) - 1  # type: ignore[attr-defined]
    content = rng.choice([T["gas"], T["feces"], T["bowel_fluid"]], size=n_colon, p=[0.5, 0.3, 0.2])
    wall = np.where(rng.uniform(size=n_colon) < 0.3, T["colon_wall_hot"], T["colon_wall"])
    pet = subject.pet_suv * rng.uniform(0.9, 1.1, len(TISSUES))
    redraw = _draw_values(rng, PET_SUV, log=_PET_LOG_UNIFORM)
    for tissue in _PET_PER_SESSION:
        pet[T[tissue]] = redraw[T[tissue]]
    return Session(
        name=name, pose=Pose(rot, shift, modes), bladder_fill=float(rng.uniform(0.6, 1.5)),
        stomach_gas_mm=float(rng.uniform(0, 35)), colon_content=content.astype(np.uint8),
        colon_wall=wall.astype(np.uint8), pet_suv=pet, pet_noise=float(rng.uniform(0.02, 0.06)),
        mri_bias=float(rng.uniform(0.2, 0.4)), mri_noise=float(rng.uniform(0.02, 0.04)),
        ct_noise_hu=float(rng.uniform(10, 25)),
    )  # fmt: skip


def _structures(subject: Subject, session: Session | None) -> list[Structure]:
    """The solids of one session (bladder filling and bowel contents vary by session)."""
    s = subject.shapes
    ids = UMD13.ids
    fill = 1.0 if session is None else session.bladder_fill
    b0 = s["urinary_bladder"]
    assert isinstance(b0, Ellipsoid)
    rfac = fill ** (1 / 3)
    # The bladder fills upwards from its base.
    bladder = Ellipsoid(b0.c + np.array([0, 0, b0.r[2] * (rfac - 1)]), b0.r * rfac)
    grey_mm, myo_mm = subject.extra["grey_mm"], subject.extra["myocardium_mm"]
    ventricles, deep_grey = s["ventricles"], s["deep_grey"]

    def brain(d, aux, x, y, z):
        t = np.where(d > -grey_mm, T["brain_grey"], T["brain_white"]).astype(np.uint8)
        t[deep_grey.eval(x, y, z)[0] < 0] = T["brain_grey"]
        t[ventricles.eval(x, y, z)[0] < 0] = T["csf"]
        return t

    def heart(d, aux, x, y, z):
        return np.where(d > -myo_mm, T["myocardium"], T["blood"])

    def kidney(pelvis: Shape) -> TissueFn:
        return lambda d, aux, x, y, z: np.where(pelvis.eval(x, y, z)[0] < 0, T["kidney_pelvis"], T["kidney_cortex"])

    st_body = s["stomach"].parts[0]  # type: ignore[attr-defined]
    gas_y = st_body.c[1] + (20.0 if session is None else session.stomach_gas_mm)

    def stomach(d, aux, x, y, z):
        lumen = np.where(y > _F32(gas_y), T["gas"], T["bowel_fluid"])
        return np.where(d > -5, T["stomach_wall"], lumen)

    def esophagus(d, aux, x, y, z):
        return np.where(aux["axis"] < 2.5, T["gas"], T["esophagus_wall"])

    content = np.full(64, T["gas"], np.uint8) if session is None else session.colon_content
    wall = np.full(64, T["colon_wall"], np.uint8) if session is None else session.colon_wall

    def colon(d, aux, x, y, z):
        seg = np.maximum(aux["seg"], 0)
        return np.where(d > -4, wall[seg], content[seg])

    def small_bowel(d, aux, x, y, z):
        return np.where(d > -3, T["bowel_wall"], T["bowel_fluid"])

    def vertebra(d, aux, x, y, z):
        disc = (np.mod(z, _F32(27.0)) < 6) & (d < -1)
        return np.where(disc, T["disc"], np.where(d > -2, T["bone_cortical"], T["bone_cancellous"]))

    def posterior(d, aux, x, y, z):
        bone = np.where(d > -2, T["bone_cortical"], T["bone_cancellous"])
        return np.where(aux["axis"] < 6, T["csf"], bone)

    def bone(d, aux, x, y, z):
        return np.where(d > -3, T["bone_cortical"], T["bone_cancellous"])

    def airway(d, aux, x, y, z):
        return np.where(d > -2, T["soft_tissue"], T["gas"])

    lungs_minus = ((s["heart"], 6.0), (s["aorta"], 4.0), (s["esophagus"], 4.0), (s["spine"], 4.0),
                   (s["liver"], 8.0), (s["spleen"], 8.0), (s["stomach"], 8.0), (s["trachea"], 3.0))  # fmt: skip
    out = [
        Structure("brain", ids["brain"], s["brain"], brain, clamp=None),
        Structure("heart", ids["heart"], s["heart"], heart, clamp=2.0),
        Structure("lung_right", ids["lung"], s["lung_right"], T["lung"], lungs_minus + ((s["bronchus_right"], 3.0),), 0.0),
        Structure("lung_left", ids["lung"], s["lung_left"], T["lung"], lungs_minus + ((s["bronchus_left"], 3.0),), 0.0),
        Structure("liver", ids["liver"], s["liver"], T["liver"],
                  ((s["heart"], 8.0), (s["kidney_right"], 5.0), (s["esophagus"], 4.0)), 1.0),
        Structure("spleen", ids["spleen"], s["spleen"], T["spleen"], ((s["kidney_left"], 5.0),), 2.0),
        Structure("kidney_left", ids["kidney_left"], s["kidney_left"], kidney(s["pelvis_left"])),
        Structure("kidney_right", ids["kidney_right"], s["kidney_right"], kidney(s["pelvis_right"])),
        Structure("pancreas", ids["pancreas"], s["pancreas"], T["pancreas"]),
        Structure("stomach", ids["stomach"], s["stomach"], stomach,
                  ((s["liver"], 5.0), (s["spleen"], 5.0), (s["pancreas"], 5.0), (s["heart"], 8.0),
                   (s["kidney_left"], 5.0)), 2.0),
        Structure("esophagus", ids["esophagus"], s["esophagus"], esophagus, clamp=None),
        Structure("aorta", ids["aorta"], s["aorta"], T["blood"], clamp=None),
        Structure("colon", ids["colon"], s["colon"], colon, ((bladder, 4.0),), 1.0),
        Structure("urinary_bladder", ids["urinary_bladder"], bladder, T["urine"], clamp=2.0),
        Structure("spine", 0, s["spine"], vertebra, clamp=None),
        Structure("posterior", 0, s["posterior"], posterior, clamp=None),
        Structure("trachea", 0, s["trachea"], airway, clamp=None),
        Structure("bronchus_right", 0, s["bronchus_right"], airway, clamp=None),
        Structure("bronchus_left", 0, s["bronchus_left"], airway, clamp=None),
        Structure("sternum", 0, s["sternum"], bone, clamp=None),
        Structure("small_bowel", 0, s["small_bowel"], small_bowel, clamp=1.0),
    ]  # fmt: skip
    for side in ("right", "left"):
        out += [
            Structure(f"paraspinal_{side}", 0, s[f"paraspinal_{side}"], T["muscle"], clamp=None),
            Structure(f"psoas_{side}", 0, s[f"psoas_{side}"], T["muscle"], clamp=None),
            Structure(f"iliac_{side}", 0, s[f"iliac_{side}"], bone, clamp=None),
            Structure(f"femur_{side}", 0, s[f"femur_{side}"], bone, clamp=None),
            Structure(f"pubis_{side}", 0, s[f"pubis_{side}"], bone, clamp=None),
        ]
    return out
