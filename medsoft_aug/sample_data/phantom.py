"""Analytic sagittal lumbar-spine phantom (T2- or T1-like MRI) with a VerSe-numbered vertebra label map.

Everything is drawn in the *displayed* 2D grid of a sagittal slice: shape (H, W), row 0 = most superior,
column 0 = most anterior (the ingest display convention ``display = vol[i].T[::-1, ::-1]``). Drawing uses an
"anatomy frame" in millimetres: ``x`` grows posteriorly, ``y`` grows inferiorly, origin at the image centre,
rotated by a small per-study angle. The slices are then stacked into a canonical RAS volume with
:func:`display_to_volume`.

Intensities are arbitrary MR units (roughly 0..1000); noise is Rician (magnitude of a complex Gaussian).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

# VerSe numbering: T12 = 19, L1..L5 = 20..24, sacrum = 26.
VERSE_LABELS = {"T12": 19, "L1": 20, "L2": 21, "L3": 22, "L4": 23, "L5": 24, "S1": 26}
LUMBAR = ["L1", "L2", "L3", "L4", "L5"]
VERTEBRAE = ["T12", "L1", "L2", "L3", "L4", "L5", "S1"]
DISCS = ["T12/L1", "L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1"]

# tissue -> intensity for each contrast
TISSUE = {
    "T2": dict(fat=430, muscle=150, soft=200, marrow=290, cortex=60, nucleus=640, annulus=220, csf=820,
               cord=380, roots=470, foramen=420, ligament=70),
    "T1": dict(fat=800, muscle=330, soft=360, marrow=520, cortex=80, nucleus=300, annulus=250, csf=130,
               cord=420, roots=330, foramen=780, ligament=110),
}


@dataclass
class Lesion:
    kind: str                 # "benign" | "malignant"
    level: str                # L1..L5
    centre_local: tuple[float, float]   # (x, y) mm in the body's local frame (x posterior, y inferior)
    lateral_mm: float         # lateral offset of the lesion centre (mm, + = patient right)
    radius_mm: float          # radius of the (near-)spherical lesion
    contrast: float           # lesion intensity / marrow intensity
    harmonics: tuple[tuple[float, float], ...] = ()   # (amplitude, phase) for k = 2, 3, 5: irregular border


@dataclass
class Anatomy:
    """All random per-study parameters (mm unless stated)."""

    spacing: float            # in-plane pixel spacing (mm), isotropic in the slice
    size: tuple[int, int]     # (H, W) pixels of the displayed grid
    theta: float              # in-plane rotation (radians)
    shift: tuple[float, float]          # translation of the anatomy frame (mm, x posterior, y inferior)
    k_lordosis: float         # axis curvature: x_axis(y) = k (y - y_apex)^2
    y_apex: float
    sacral_tilt: float        # extra tilt of the sacrum (radians)
    body_h: dict[str, float]  # half-height per vertebra
    body_a: dict[str, float]  # half-depth (AP) per vertebra
    body_w: float             # half-width (lateral) of the bodies
    disc_h: dict[str, float]  # full height per disc
    disc_nucleus: dict[str, float]      # nucleus brightness factor (degeneration < 1)
    canal_depth: float        # AP depth of the canal
    canal_halfwidth: float    # lateral half-width of the canal
    canal_gap: float          # posterior longitudinal ligament thickness
    skin_x: float             # posterior skin line (anatomy x)
    fat_t: float              # subcutaneous fat thickness
    gain: float               # global intensity gain
    marrow: float             # marrow factor
    noise: float              # Rician sigma (intensity units)
    lesion: Lesion | None = None
    stenosis: dict[str, float] = field(default_factory=dict)   # disc -> canal narrowing fraction 0..0.7
    foraminal: dict[str, float] = field(default_factory=dict)  # "L4/L5:left" -> foramen narrowing 0..0.8


def random_anatomy(rng: np.random.Generator, size: tuple[int, int] = (128, 128)) -> Anatomy:
    """Draw a normal anatomy; the caller adds a lesion or narrowing."""
    u = rng.uniform
    h = {v: u(12.5, 14.0) + 0.4 * i for i, v in enumerate(VERTEBRAE)}
    h["T12"] = u(11.5, 12.5)
    h["S1"] = u(15.0, 17.0)
    a = {v: u(17.0, 19.5) + 0.3 * i for i, v in enumerate(VERTEBRAE)}
    a["S1"] = u(17.0, 19.0)
    disc_h = {d: u(7.5, 10.0) + (1.5 if d in ("L3/L4", "L4/L5") else 0.0) for d in DISCS}
    disc_h["L5/S1"] = u(7.0, 9.0)
    nucleus = {d: (u(0.45, 0.75) if (d in ("L4/L5", "L5/S1") and u() < 0.5) else u(0.85, 1.05)) for d in DISCS}
    return Anatomy(
        spacing=float(u(1.85, 2.05)), size=size, theta=float(np.deg2rad(u(-5, 5))),
        shift=(float(u(-14, -4)), float(u(-6, 6))), k_lordosis=float(u(0.0011, 0.0022)),
        y_apex=float(u(115, 140)), sacral_tilt=float(np.deg2rad(u(12, 22))), body_h=h, body_a=a,
        body_w=float(u(20, 24)), disc_h=disc_h, disc_nucleus=nucleus, canal_depth=float(u(14, 18)),
        canal_halfwidth=float(u(9, 11)), canal_gap=float(u(1.2, 2.0)), skin_x=float(u(95, 115)),
        fat_t=float(u(10, 22)), gain=float(u(0.34, 0.48)), marrow=float(u(0.9, 1.1)), noise=float(u(3.6, 5.6)),
    )


@dataclass
class _Element:
    name: str                 # vertebra or disc name
    centre: np.ndarray        # (2,) anatomy frame mm
    phi: float                # tilt (radians): tangent = (sin phi, cos phi)
    half_h: float
    half_a: float


def _chain(an: Anatomy) -> list[_Element]:
    """Stack T12, discs, L1..L5, S1 top to bottom along the lordotic axis; L3's centre lands near y = 0."""
    order = [x for pair in zip(VERTEBRAE, DISCS + [None]) for x in pair if x is not None]
    elems: list[_Element] = []
    top = np.array([0.0, 0.0])
    for name in order:
        is_disc = "/" in name
        half_h = an.disc_h[name] / 2 if is_disc else an.body_h[name]
        phi = float(np.arctan(2 * an.k_lordosis * (top[1] + half_h - an.y_apex)))
        if name == "S1":
            phi += an.sacral_tilt
        elif name == "L5/S1":
            phi += an.sacral_tilt / 2
        t = np.array([np.sin(phi), np.cos(phi)])
        centre = top + t * half_h
        if is_disc:
            lo, hi = name.split("/")
            half_a = 0.95 * min(an.body_a[lo], an.body_a[hi])
        else:
            half_a = an.body_a[name]
        elems.append(_Element(name, centre, phi, half_h, half_a))
        top = centre + t * half_h
    l3 = next(e for e in elems if e.name == "L3").centre.copy()
    for e in elems:   # L3 at y = 0, axis x so that x_axis(y_apex) = 0 relative to L3
        e.centre = e.centre - l3
    return elems


def _local(qx: np.ndarray, qy: np.ndarray, e: _Element) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in the element frame: lx along the normal (posterior), ly along the tangent (inferior)."""
    dx, dy = qx - e.centre[0], qy - e.centre[1]
    s, c = np.sin(e.phi), np.cos(e.phi)
    return dx * c - dy * s, dx * s + dy * c


def _rounded_rect_sdf(lx, ly, half_a, half_h, r):
    """Signed distance (mm) to a rounded rectangle; negative inside."""
    qx = np.abs(lx) - (half_a - r)
    qy = np.abs(ly) - (half_h - r)
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) - r


def _grid(an: Anatomy) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Anatomy-frame coordinates (qx, qy) and display-frame mm (px, py) of every display pixel (H, W)."""
    H, W = an.size
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float64)
    px, py = (cols - (W - 1) / 2) * an.spacing, (rows - (H - 1) / 2) * an.spacing
    dx, dy = px - an.shift[0], py - an.shift[1]
    c, s = np.cos(an.theta), np.sin(an.theta)
    return dx * c + dy * s, -dx * s + dy * c, px, py


def anatomy_to_display(an: Anatomy, q: np.ndarray) -> tuple[float, float]:
    """Anatomy-frame point (mm) -> displayed pixel (x = column, y = row)."""
    H, W = an.size
    c, s = np.cos(an.theta), np.sin(an.theta)
    px = q[0] * c - q[1] * s + an.shift[0]
    py = q[0] * s + q[1] * c + an.shift[1]
    return float(px / an.spacing + (W - 1) / 2), float(py / an.spacing + (H - 1) / 2)


def element_point(an: Anatomy, name: str, local: tuple[float, float]) -> np.ndarray:
    """Anatomy-frame position of a point given in an element's local frame."""
    e = next(e for e in _chain(an) if e.name == name)
    s, c = np.sin(e.phi), np.cos(e.phi)
    return e.centre + np.array([local[0] * c + local[1] * s, -local[0] * s + local[1] * c])


def _row_window(an: Anatomy, e: _Element) -> slice:
    """Display rows an element can touch (body, canal, posterior elements up to ~75 mm behind it, any tilt)."""
    H = an.size[0]
    r = anatomy_to_display(an, e.centre)[1]
    ext = (e.half_h + 20.0 + 80.0 * abs(np.sin(abs(e.phi) + abs(an.theta)))) / an.spacing
    return slice(max(0, int(r - ext)), min(H, int(np.ceil(r + ext)) + 1))


def _lesion_mask(an: Anatomy, e: _Element, qx, qy, dx_slice: float) -> np.ndarray:
    """Soft [0,1] lesion occupancy in this slice (before clipping to the body)."""
    les = an.lesion
    r2 = les.radius_mm ** 2 - (dx_slice - les.lateral_mm) ** 2
    if r2 <= 0:
        return np.zeros(qx.shape)
    r = np.sqrt(r2)
    lx, ly = _local(qx, qy, e)
    ddx, ddy = lx - les.centre_local[0], ly - les.centre_local[1]
    ang = np.arctan2(ddy, ddx)
    rr = r * (1 + sum(amp * np.sin(k * ang + ph) for k, (amp, ph) in zip((2, 3, 5), les.harmonics)))
    edge = 0.35 if les.kind == "benign" else 1.2   # mm: sharp vs ill-defined margin
    return np.clip((rr - np.hypot(ddx, ddy)) / (2 * edge) + 0.5, 0, 1)


def render_slice(an: Anatomy, dx: float, contrast: str, texture: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one sagittal slice at lateral offset ``dx`` mm (+ = patient right).

    Returns (image float64 (H, W) noise-free, labels uint8 (H, W), lesion bool (H, W)).
    ``texture`` is a smooth zero-mean field (H, W) of unit scale.
    """
    T = {k: v * an.gain for k, v in TISSUE[contrast].items()}
    qx, qy, px, py = _grid(an)
    H, W = an.size
    chain = _chain(an)
    img = _background(an, T, chain, qx, qy, texture)
    lab = np.zeros((H, W), np.uint8)
    lesion = np.zeros((H, W), bool)
    for e in chain:
        w = _row_window(an, e)
        img[w], lab[w], les = _draw_element(an, T, e, dx, qx[w], qy[w], texture[w], img[w], lab[w])
        if les is not None:
            lesion[w] = les
    return _stenosis(an, T, chain, qx, qy, abs(dx), img), lab, lesion


def _background(an: Anatomy, T: dict, chain: list[_Element], qx, qy, texture) -> np.ndarray:
    """Soft tissue, paraspinal muscle posterior to the canal, subcutaneous fat, skin, air."""
    img = T["soft"] * (1 + 0.08 * texture)
    back = np.zeros(an.size, bool)
    for e in chain:
        lx, ly = _local(qx, qy, e)
        lo = -np.inf if e.name == "T12" else -(e.half_h + 0.6)
        hi = np.inf if e.name == "S1" else e.half_h + 0.6
        back |= (ly >= lo) & (ly <= hi) & (lx > e.half_a + an.canal_gap + an.canal_depth)
    img = np.where(back, T["muscle"] * (1 + 0.1 * texture + 0.05 * np.sin(qy / 2.5)), img)
    skin = an.skin_x + 0.002 * qy ** 2
    img = np.where(qx > skin - an.fat_t, T["fat"] * (1 + 0.05 * texture), img)
    return np.where(qx > skin, 0.0, img)


def _draw_element(an: Anatomy, T: dict, e: _Element, dx: float, qxw, qyw, texw, imw, lbw):
    """One vertebra or disc within its row window: canal and lateral structures, posterior elements, then the
    body (with its lesion) or the disc. Returns (image rows, label rows, lesion rows or None)."""
    lat = abs(dx)
    lx, ly = _local(qxw, qyw, e)
    is_disc = "/" in e.name
    a = e.half_a * (1 - 0.25 * min(lat / an.body_w, 1) ** 2)
    front = a + an.canal_gap
    imw, lbw, canal = _canal(an, T, e, dx, lx, ly, texw, imw, lbw, front)
    # posterior elements: spinous process at the midline, laminae/facets laterally (not for S1: sacrum)
    if not is_disc and e.name != "S1":
        back0 = front + an.canal_depth
        plen = 28.0 if lat < 6 else 12.0
        pe_ly = ly - 0.25 * (lx - back0)     # spinous processes point inferiorly
        pe = _rounded_rect_sdf(lx - back0 - plen / 2, pe_ly - 2.0, plen / 2, e.half_h * 0.55, 3.0)
        pe_in = pe < 0
        imw = np.where(pe_in, np.where(pe > -1.2, T["cortex"], T["marrow"] * an.marrow), imw)
        lbw = np.where(pe_in, VERSE_LABELS[e.name], lbw)
        imw = np.where(canal & ~pe_in & (lx > back0 - 2.0), T["ligament"], imw)   # ligamentum flavum
    # vertebral body or disc
    lesion = None
    if is_disc:
        sdf = _rounded_rect_sdf(lx, ly, a, e.half_h + 0.8, 2.0)
        inside = sdf < 0
        nuc = (lx / (0.6 * a)) ** 2 + (ly / (0.75 * e.half_h)) ** 2 < 1
        disc_val = np.where(nuc, T["nucleus"] * an.disc_nucleus[e.name], T["annulus"])
        imw = np.where(inside, disc_val * (1 + 0.04 * texw), imw)
    else:
        h = e.half_h
        sdf = _rounded_rect_sdf(lx, ly, a, h, 3.0)
        inside = sdf < 0
        marrow = T["marrow"] * an.marrow * (1 + 0.07 * texw)
        val = np.where(sdf > -1.3, T["cortex"], marrow)
        if an.lesion is not None and an.lesion.level == e.name:
            occ = _lesion_mask(an, e, qxw, qyw, dx) * (sdf < -1.3)
            val = val * (1 - occ) + occ * T["marrow"] * an.marrow * an.lesion.contrast * (1 + 0.05 * texw)
            lesion = occ >= 0.5
        imw = np.where(inside, val, imw)
        lbw = np.where(inside, VERSE_LABELS[e.name], lbw)
    return imw, lbw, lesion


def _canal(an: Anatomy, T: dict, e: _Element, dx: float, lx, ly, texw, imw, lbw, front: float):
    """The spinal canal of one element (CSF with conus or cauda equina at the midline) and, lateral to it, the
    pedicles and foramina (fat with the exiting root; narrowed foramina fill in). Returns (image, labels, canal)."""
    lat = abs(dx)
    is_disc = "/" in e.name
    depth = an.canal_depth
    in_canal_plane = np.clip((an.canal_halfwidth - lat) / 2.0 + 0.5, 0, 1)   # partial-volume fraction
    seg_y = np.abs(ly) <= e.half_h + 0.6
    canal = seg_y & (lx > front) & (lx < front + depth)
    csf = T["csf"] * np.ones_like(imw)
    if e.name in ("T12", "T12/L1", "L1"):
        conus_w = {"T12": 4.0, "T12/L1": 3.5, "L1": 2.5}[e.name] - (ly + e.half_h) / (2 * e.half_h) * 1.0
        csf = np.where(np.abs(lx - front - depth * 0.45) < conus_w, T["cord"], csf)
    else:
        roots = np.abs(np.sin((lx - front) * 1.3)) < 0.18
        csf = np.where(roots & (lx - front > depth * 0.5), T["roots"], csf)
    side = "right" if dx > 0 else "left"
    disc_below = e.name if is_disc else (DISCS[VERTEBRAE.index(e.name)] if e.name != "S1" else "")
    narrow = an.foraminal.get(f"{disc_below}:{side}", 0.0)
    fx = (lx - front) / depth                                  # 0 = front of the canal, 1 = back
    fat = fx < 0.9 * (1 - narrow)
    lateral = np.where(fat, T["foramen"], T["ligament"] * 1.5)
    pedicle = np.zeros_like(canal)
    if not is_disc:
        root = np.hypot((fx - 0.3) * depth, ly - 0.45 * e.half_h) < 2.0
        lateral = np.where(root & fat, T["roots"] * 0.5, lateral)
        pedicle = ly < 0.15 * e.half_h if e.name != "S1" else np.ones_like(canal)
        lateral = np.where(pedicle, T["marrow"] * an.marrow * (1 + 0.06 * texw), lateral)
    region = np.where(lat < an.canal_halfwidth + 1.0, csf * in_canal_plane + lateral * (1 - in_canal_plane),
                      lateral)
    imw = np.where(canal, region, imw)
    if not is_disc and lat >= an.canal_halfwidth:
        lbw = np.where(canal & pedicle, VERSE_LABELS[e.name], lbw)
    return imw, lbw, canal


def _stenosis(an: Anatomy, T: dict, chain: list[_Element], qx, qy, lat: float, img: np.ndarray) -> np.ndarray:
    """Canal stenosis at a disc level: posterior disc bulge and thick ligamentum flavum."""
    for e in chain:
        sten = an.stenosis.get(e.name, 0.0)
        if sten > 0:
            lx, ly = _local(qx, qy, e)
            a = e.half_a * (1 - 0.25 * min(lat / an.body_w, 1) ** 2)
            back0 = a + an.canal_gap + an.canal_depth
            bulge = ((lx - a) / (sten * an.canal_depth * 0.8 + an.canal_gap)) ** 2 + (ly / (e.half_h + 2.5)) ** 2 < 1
            flavum = ((lx - back0) / (sten * an.canal_depth * 0.45 + 0.5)) ** 2 + (ly / (e.half_h + 3.0)) ** 2 < 1
            img = np.where(bulge & (lx > a - 1.0), T["annulus"], img)
            img = np.where(flavum & (lx < back0 + 1.0), T["ligament"], img)
    return img


def stenosis_canal_centre(an: Anatomy, disc: str) -> float:
    """Local x (mm, disc frame, midline) of the centre of the remaining canal at a disc level."""
    e = next(e for e in _chain(an) if e.name == disc)
    return e.half_a + an.canal_gap + an.canal_depth * (0.5 + 0.175 * an.stenosis.get(disc, 0.0))


def render_volume(an: Anatomy, offsets_mm: list[float], contrast: str, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render all sagittal slices (left to right) as display stacks.

    Returns (image float32 (n, H, W) with Rician noise, labels uint8 (n, H, W), lesion bool (n, H, W));
    slice n is at lateral offset ``offsets_mm[n]`` (mm, + = patient right).
    """
    n = len(offsets_mm)
    H, W = an.size
    tex = ndimage.gaussian_filter(rng.standard_normal((n, H, W)), sigma=(0.7, 2.5, 2.5))
    tex /= tex.std() + 1e-12
    imgs, labs, less = [], [], []
    for i, dx in enumerate(offsets_mm):
        img, lab, les = render_slice(an, dx, contrast, tex[i])
        img = ndimage.gaussian_filter(img, 0.6)      # partial-volume softening of the analytic edges
        re = img + rng.normal(0, an.noise, img.shape)
        im = rng.normal(0, an.noise, img.shape)
        imgs.append(np.hypot(re, im))
        labs.append(lab)
        less.append(les)
    return np.stack(imgs).astype(np.float32), np.stack(labs), np.stack(less)


def display_to_volume(display: np.ndarray) -> np.ndarray:
    """Display stack (n, H, W) (row 0 superior, col 0 anterior) -> canonical RAS volume (n, W, H) = (X, Y, Z).

    Inverse of the ingest convention ``display = vol[i].T[::-1, ::-1]`` applied to every slice i.
    """
    return np.ascontiguousarray(display[:, ::-1, ::-1].transpose(0, 2, 1))


def volume_to_display(vol: np.ndarray, i: int) -> np.ndarray:
    """Canonical RAS volume (X, Y, Z) -> displayed sagittal slice i (Z, Y) flipped: row 0 superior, col 0 anterior."""
    return vol[i].T[::-1, ::-1]
