import numpy as np
import torch

from possae.organism.data import EpochSampler, windows
from possae.tokenizer import encode_documents


def test_windows_are_bos_prefixed_consecutive_slices():
    stream = np.arange(10, 30, dtype=np.uint16)
    w = windows(stream, n_ctx=5, bos_id=0, offset=1)
    assert w.tolist() == [[0, 11, 12, 13, 14], [0, 15, 16, 17, 18], [0, 19, 20, 21, 22], [0, 23, 24, 25, 26]]
    assert windows(stream, 5, 0, max_windows=2).shape == (2, 5)


def test_epoch_sampler_covers_disjoint_windows_and_is_deterministic():
    stream = np.arange(1, 1001, dtype=np.uint16)
    s = EpochSampler(stream, n_ctx=9, batch_size=4, bos_id=0, seed=3)
    batches = [s.batch(i) for i in range(s.per_epoch)]
    assert all((b[:, 0] == 0).all() for b in batches)
    body = torch.cat([b[:, 1:] for b in batches]).flatten()
    assert len(set(body.tolist())) == body.numel()  # no token twice in an epoch
    assert all((b[:, 2:] - b[:, 1:-1] == 1).all() for b in batches)  # contiguous text
    again = EpochSampler(stream, 9, 4, 0, seed=3)
    assert torch.equal(again.batch(s.per_epoch + 2), s.batch(s.per_epoch + 2))  # resumable at any step
    assert not torch.equal(s.batch(0), s.batch(s.per_epoch))  # a new order every epoch


def test_encode_documents_separates_with_eos():
    class Enc:
        def __init__(self, ids):
            self.ids = ids

    class Tok:
        def encode_batch(self, docs):
            return [Enc([ord(c) for c in d]) for d in docs]

    assert encode_documents(Tok(), ["ab", "c"], eos_id=0).tolist() == [97, 98, 0, 99, 0]
