"""Video inputs of predict.py (`jaxmatte.data.video`, `jaxmatte.video`): a short generated clip through a tiny TSR
model into alpha / RGBA / composite videos and PNG sequences, and broken clips skipped with one line each."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from scripts import load_script
from test_predict import TRAINED_INFO, tiny_tsr_model

from jaxmatte import foreground as fg
from jaxmatte import pretrained
from jaxmatte.data import video
from jaxmatte.data.io import ImageReadError, read_image, read_mask
from jaxmatte.predict import Predictor
from jaxmatte.video import colours_of

FRAMES, HEIGHT, WIDTH = 12, 48, 64
RATE = Fraction(30000, 1001)


def write_clip(path, frames, rate=RATE):
    """An H.264 .mp4 of RGB frames, as a camera or an editor would give."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def moving_frames(count=FRAMES):
    """A warm disc moving over a cool gradient."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    back = np.stack([40 + cols, 90 + rows, 200 - cols], -1)
    frames = []
    for index in range(count):
        distance = np.hypot(rows - 24, cols - 14 - 3 * index)
        weight = np.clip((14 - distance) / 4, 0, 1)[..., None]
        frames.append(np.clip(weight * np.array([230, 150, 60]) + (1 - weight) * back, 0, 255).astype(np.uint8))
    return frames


def stream_of(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.name, stream.codec_context.pix_fmt, stream.average_rate


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny model, a 12-frame 48x64 clip, an image, and the clip's frames as the decoder gives them."""
    config, model = tiny_tsr_model()
    root = tmp_path_factory.mktemp("video")
    pretrained.save_pretrained(model, config, root / "model", info=TRAINED_INFO)
    write_clip(root / "clip.mp4", moving_frames())
    Image.fromarray(moving_frames(1)[0]).save(root / "still.png")
    decoded = video.read_frames(root / "clip.mp4")
    assert len(decoded) == FRAMES and decoded[0].shape == (HEIGHT, WIDTH, 3)
    return {"root": root, "decoded": decoded, "predictor": Predictor(root / "model", batch_size=5)}


def test_clip_round_trip_videos(setup, tmp_path, capsys):
    predict_cli = load_script("predict")
    root, decoded, predictor = setup["root"], setup["decoded"], setup["predictor"]
    out = tmp_path / "out"
    argv = [str(root / "clip.mp4"), str(root / "still.png"), "--checkpoint", str(root / "model"), "--output", str(out)]
    argv += ["--format", "alpha,rgba,composite", "--batch-size", "5", "--background", "0,255,0"]
    assert predict_cli.main(argv) == 0
    assert "wrote 2 of 2 files" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "clip_alpha.mkv", "clip_composite.mp4", "clip_rgba.mov", "still.png", "still_composite.png", "still_rgba.png",
    ]  # fmt: skip
    still = predictor.predict_arrays([read_image(root / "still.png")])[0]
    np.testing.assert_array_equal(read_mask(out / "still.png"), still)

    floats = np.stack(predictor.predict_arrays(decoded, floats=True))
    expected_alpha = np.stack(predictor.predict_arrays(decoded))
    alphas = np.stack(video.read_frames(out / "clip_alpha.mkv", "gray"))
    assert stream_of(out / "clip_alpha.mkv") == ("ffv1", "gray", RATE)
    np.testing.assert_array_equal(alphas, expected_alpha)  # lossless: exactly the per-frame predictions
    assert alphas.std() > 1.0  # a matte, not a constant

    rgba = np.stack(video.read_frames(out / "clip_rgba.mov", "rgba"))
    assert stream_of(out / "clip_rgba.mov") == ("qtrle", "argb", RATE)
    assert rgba.shape == (FRAMES, HEIGHT, WIDTH, 4)
    np.testing.assert_array_equal(rgba[..., 3], expected_alpha)  # the alpha really travels in the RGBA video
    frames = np.stack(decoded)
    colours = [colours_of(frames[start : start + 5], floats[start : start + 5], 5) for start in range(0, FRAMES, 5)]
    np.testing.assert_array_equal(rgba[..., :3], np.concatenate(colours))  # the jitted estimate, batches of 5
    assert np.abs(rgba[..., :3].astype(int) - np.stack(decoded)).mean() > 0.5  # estimated, not the frames

    composite = np.stack(video.read_frames(out / "clip_composite.mp4"))
    name, _, rate = stream_of(out / "clip_composite.mp4")
    assert (name, rate, composite.shape) == ("h264", RATE, (FRAMES, HEIGHT, WIDTH, 3))
    expected = fg.composite(rgba[..., :3], rgba[..., 3], (0, 255, 0))
    assert np.abs(composite.astype(int) - expected).mean() < 4  # H.264 at CRF 16


def test_frames_mode_without_foreground(setup, tmp_path):
    predict_cli = load_script("predict")
    root, decoded, predictor = setup["root"], setup["decoded"], setup["predictor"]
    argv = [str(root / "clip.mp4"), "--checkpoint", str(root / "model"), "--output", str(tmp_path), "--batch-size", "5"]
    argv += ["--format", "alpha,rgba", "--video-output", "frames", "--foreground", "none"]
    assert predict_cli.main(argv) == 0
    expected_alpha = predictor.predict_arrays(decoded)
    for folder in ("alpha", "rgba"):
        names = sorted(p.name for p in (tmp_path / "clip" / folder).iterdir())
        assert names == [f"{index:06d}.png" for index in range(FRAMES)]
    for index in range(FRAMES):
        alpha = read_mask(tmp_path / "clip" / "alpha" / f"{index:06d}.png")
        np.testing.assert_array_equal(alpha, expected_alpha[index])
        rgba = np.asarray(Image.open(tmp_path / "clip" / "rgba" / f"{index:06d}.png"))
        np.testing.assert_array_equal(rgba[..., :3], decoded[index])  # --foreground none: the frame's own colours
        np.testing.assert_array_equal(rgba[..., 3], expected_alpha[index])


def test_broken_videos_are_skipped_with_one_line(setup, tmp_path, capsys):
    predict_cli = load_script("predict")
    root = setup["root"]
    data = (root / "clip.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    (tmp_path / "empty.webm").write_bytes(b"")
    out = tmp_path / "out"
    bad = [str(tmp_path / name) for name in ("truncated.mp4", "garbage.mp4", "empty.webm")]
    common = ["--checkpoint", str(root / "model"), "--output", str(out), "--format", "alpha,rgba"]
    capsys.readouterr()
    assert predict_cli.main([*bad, str(root / "still.png"), *common]) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("skipped")]
    assert len(lines) == 3 and all("Traceback" not in line for line in captured.err.splitlines())
    for name in ("truncated.mp4", "garbage.mp4", "empty.webm"):
        assert sum(line.startswith(f"skipped {tmp_path / name}: ") for line in lines) == 1
    assert "wrote 1 of 4 files" in captured.out and "skipped 3: 3 unreadable" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["still.png", "still_rgba.png"]  # nothing half-written

    assert predict_cli.main([*bad, *common]) == 2  # nothing written
    # a glob picks videos too
    glob_argv = [str(root / "*.mp4"), "--checkpoint", str(root / "model"), "--output", str(tmp_path / "glob")]
    assert predict_cli.main(glob_argv) == 0
    assert sorted(p.name for p in (tmp_path / "glob").iterdir()) == ["clip_alpha.mkv"]


def test_missing_pyav_is_a_usage_error(setup, tmp_path, monkeypatch, capsys):
    predict_cli = load_script("predict")
    monkeypatch.setattr(video, "available", lambda: False)
    argv = [str(setup["root"] / "clip.mp4"), "--checkpoint", str(tmp_path / "no-model"), "--output", str(tmp_path)]
    assert predict_cli.main(argv) == 2  # before the model loads
    assert "PyAV" in capsys.readouterr().err


def test_a_clip_failing_half_way_leaves_no_outputs(setup, tmp_path, monkeypatch, capsys):
    predict_cli = load_script("predict")
    root, decoded = setup["root"], setup["decoded"]
    info = video.probe(root / "clip.mp4")

    class FailingBatches:
        """Two good batches, then the decoder's error."""

        closed = False

        def __iter__(self):
            yield decoded[:5]
            yield decoded[5:10]
            raise ImageReadError(root / "clip.mp4", "cannot be decoded after frame 10 (test)")

        def close(self):
            FailingBatches.closed = True

    monkeypatch.setattr(video, "read_batches", lambda path, size: (info, FailingBatches()))
    for mode in ("video", "frames"):
        out = tmp_path / mode
        argv = [str(root / "clip.mp4"), "--checkpoint", str(root / "model"), "--output", str(out), "--batch-size", "5"]
        assert predict_cli.main([*argv, "--format", "alpha,rgba,composite", "--video-output", mode]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("skipped")]
        assert errors == [f"skipped {root / 'clip.mp4'}: cannot be decoded after frame 10 (test)"]
        assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))
        assert FailingBatches.closed


def test_odd_sides_and_probe(tmp_path):
    info = video.VideoInfo(width=7, height=5, rate=Fraction(24), frames=3, codec="test")
    frames = [np.full((5, 7, 3), 40 * index, np.uint8) for index in range(3)]
    sinks = video.sinks(tmp_path, Path("odd"), ["alpha", "composite"], info)
    for frame in frames:
        sinks["alpha"].write(frame[..., 0])
        sinks["composite"].write(frame)
    for sink in sinks.values():
        sink.close()
    assert stream_of(tmp_path / "odd_composite.mp4") == ("h264", "yuv444p", Fraction(24))  # 4:2:0 needs even sides
    composite = np.stack(video.read_frames(tmp_path / "odd_composite.mp4"))
    assert composite.shape == (3, 5, 7, 3) and np.abs(composite.astype(int) - np.stack(frames)).max() <= 3
    np.testing.assert_array_equal(
        np.stack(video.read_frames(tmp_path / "odd_alpha.mkv", "gray")), np.stack(frames)[..., 0]
    )
    probed = video.probe(tmp_path / "odd_alpha.mkv")
    assert (probed.width, probed.height, probed.rate, probed.codec) == (7, 5, Fraction(24), "ffv1")
    with pytest.raises(ImageReadError, match="no such file"):
        video.probe(tmp_path / "missing.mp4")


def test_high_res_video_equals_the_high_res_frames(setup, tmp_path):
    predict_cli = load_script("predict")
    root, decoded = setup["root"], setup["decoded"]
    out = tmp_path / "out"
    argv = [str(root / "clip.mp4"), "--checkpoint", str(root / "model"), "--output", str(out), "--batch-size", "5"]
    assert predict_cli.main([*argv, "--high-res", "--tile", "32"]) == 0
    tiled = Predictor(root / "model", batch_size=5, high_res=True, tile=32)
    expected = np.stack(tiled.predict_arrays(decoded))
    np.testing.assert_array_equal(np.stack(video.read_frames(out / "clip_alpha.mkv", "gray")), expected)
    plain = np.stack(setup["predictor"].predict_arrays(decoded))
    assert np.abs(expected.astype(int) - plain).max() > 0  # the refiner ran at the frames' size, not the canvas's


def set_display_rotation(path, clockwise_degrees):
    """Write a rotation into an .mp4's track header matrix, as phones record portrait clips stored landscape."""
    import struct

    cos, sin = {90: (0, 1), 180: (-1, 0), 270: (0, -1)}[clockwise_degrees]
    data = bytearray(path.read_bytes())
    box = data.index(b"tkhd")
    times = 8 + 8 + 4 + 4 + 8 if data[box + 4] == 1 else 4 + 4 + 4 + 4 + 4  # version 1: 64-bit times and duration
    start = box + 4 + 4 + times + 8 + 2 + 2 + 2 + 2  # after reserved, layer, group, volume, reserved
    fixed = [cos, sin, 0, -sin, cos, 0, 0, 0]  # 16.16 fixed point (u, v, w: 2.30)
    matrix = b"".join(struct.pack(">i", value * 65536) for value in fixed) + struct.pack(">i", 1 << 30)
    data[start : start + 36] = matrix
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("clockwise", [90, 180, 270])
def test_a_rotated_phone_clip_is_matted_and_written_as_displayed(setup, tmp_path, clockwise):
    predict_cli = load_script("predict")
    stored = moving_frames(4)
    stored[0][:6, :10] = 255  # a mark in the stored frame's top-left corner
    clip = tmp_path / "phone.mp4"
    write_clip(clip, stored)
    set_display_rotation(clip, clockwise)
    info = video.probe(clip)
    turned = (HEIGHT, WIDTH) if clockwise == 180 else (WIDTH, HEIGHT)
    assert (info.height, info.width) == turned and info.rotation == (360 - clockwise) % 360
    shown = video.read_frames(clip)
    assert len(shown) == 4 and shown[0].shape == (*turned, 3)
    corner = {90: (0, -1), 180: (-1, -1), 270: (-1, 0)}[clockwise]  # where the stored top-left corner is shown
    assert shown[0][corner].min() > 200 and shown[0][0, 0].min() < 150  # white mark there, not here
    out = tmp_path / "out"
    argv = [str(clip), "--checkpoint", str(setup["root"] / "model"), "--output", str(out), "--batch-size", "3"]
    assert predict_cli.main(argv) == 0
    alphas = np.stack(video.read_frames(out / "phone_alpha.mkv", "gray"))
    assert alphas.shape == (4, *turned)
    np.testing.assert_array_equal(alphas, np.stack(setup["predictor"].predict_arrays(shown)))


def write_clip_with_audio(path, frames, rate=RATE, sample_rate=48000):
    """An .mp4 of RGB frames with an AAC tone as long as the video."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        sound = container.add_stream("aac", rate=sample_rate)
        sound.layout = "mono"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        count = int(sample_rate * len(frames) / rate)
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(count) / sample_rate)).astype(np.float32)[None]
        for start in range(0, count, 1024):
            chunk = av.AudioFrame.from_ndarray(tone[:, start : start + 1024].copy(), format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = sample_rate, start
            container.mux(sound.encode(chunk))
        container.mux(sound.encode(None))
        container.mux(stream.encode(None))


def audio_packets(path):
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        return stream.codec_context.name, [bytes(packet) for packet in container.demux(stream) if packet.size]


def test_rgba_and_composite_videos_carry_the_clips_audio(setup, tmp_path):
    predict_cli = load_script("predict")
    clip = tmp_path / "talk.mp4"
    write_clip_with_audio(clip, moving_frames())
    codec, packets = audio_packets(clip)
    assert codec == "aac" and len(packets) > 10
    out = tmp_path / "out"
    argv = [str(clip), str(setup["root"] / "clip.mp4"), "--checkpoint", str(setup["root"] / "model")]
    assert predict_cli.main([*argv, "--output", str(out), "--format", "alpha,rgba,composite", "--batch-size", "5"]) == 0
    for name in ("talk_rgba.mov", "talk_composite.mp4"):
        assert audio_packets(out / name) == (codec, packets), name  # copied, not re-encoded
        assert len(video.read_frames(out / name)) == FRAMES
    assert audio_packets(out / "talk_alpha.mkv") is None
    assert all(audio_packets(out / f"clip_{name}") is None for name in ("rgba.mov", "composite.mp4"))  # none to copy
