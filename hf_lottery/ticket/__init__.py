"""The ticket artifact: the mask, its config, fingerprints, codec, history, card, folders, the Hub and sparse
model folders. Storage modules return plain tensors and configs; only `mask.py` builds a `TicketMask`."""
