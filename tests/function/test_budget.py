"""The admission queue's policy (budget.Admission): a body's size counts, one client holds
at most its share, and the others are let in beside a flood. No waiting: wait_seconds 0."""

from __future__ import annotations

import contextlib
import threading

import pytest

from recognizer.budget import Admission, Busy

MiB = 1024 * 1024


def queue(images: int = 96, share: float = 0.5, wait: float = 0.0) -> Admission:
    return Admission(images, wait, client_share=share, bytes_per_image=256 * 1024)


def test_a_body_costs_its_size_in_images():
    admission = queue()
    assert admission.body_images(0) == 1
    assert admission.body_images(300) == 1
    assert admission.body_images(256 * 1024 + 1) == 2
    assert admission.body_images(10 * MiB) == 40


def test_one_clients_flood_leaves_room_for_another():
    """A hostile client's 10 MiB bodies: its first takes 40 of 96, its second would pass
    its share (48) and is refused; a normal client's one-image request is let in at once,
    and so is a second client's 10 MiB body."""
    admission = queue()
    with contextlib.ExitStack() as held:
        held.enter_context(admission.admit(admission.body_images(10 * MiB), "addr:attacker"))
        with pytest.raises(Busy, match="share of them \\(48\\)"):
            held.enter_context(admission.admit(admission.body_images(10 * MiB), "addr:attacker"))
        held.enter_context(admission.admit(8, "addr:attacker"))  # small ones still fit
        with admission.admit(1, "id:probe") as grow:
            grow(1)
        held.enter_context(admission.admit(admission.body_images(10 * MiB), "addr:other"))
        # 48 + 40 of 96 held: a third client's 10 MiB body does not fit; a probe does.
        with pytest.raises(Busy):
            held.enter_context(admission.admit(40, "addr:third"))
        with admission.admit(1, "id:probe"):
            pass
    with admission.admit(96, "addr:attacker"):  # all given back, to every client
        pass


def test_a_request_grows_to_its_images_within_its_clients_share():
    """A 380 KB body of 64 images: 2 images for its bytes, then its images, cut to the
    client's share so a batch larger than the share is still served alone."""
    admission = queue()
    with admission.admit(admission.body_images(380_000), "addr:batch") as grow:
        grow(64)  # cut to 48
        with pytest.raises(Busy), admission.admit(1, "addr:batch"):
            pass
        # 96 of 96 held: a third client waits, then is refused
        with admission.admit(48, "id:other"), pytest.raises(Busy), admission.admit(1, "id:3"):
            pass
    with admission.admit(96, "addr:batch"):
        pass


def test_growing_past_the_free_room_is_refused_and_gives_back_what_was_held():
    admission = queue(images=10, share=1.0)
    with admission.admit(6, "a"):
        with pytest.raises(Busy), admission.admit(2, "b") as grow:
            grow(5)
        with admission.admit(4, "c"):  # b's 2 were given back
            pass


def test_a_waiting_request_is_let_in_when_room_is_given_back():
    admission = queue(images=4, share=1.0, wait=5.0)
    released = threading.Event()
    entered = threading.Event()

    def holder() -> None:
        with admission.admit(4, "a"):
            entered.set()
            released.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    entered.wait(5)
    threading.Timer(0.1, released.set).start()
    with admission.admit(4, "b"):  # waits for a's room, well within 5 s
        assert released.is_set()
    thread.join(5)
