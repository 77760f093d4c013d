"""em3rec: end-to-end multimodal item model and ranking model (EM3) on TorchRec."""
