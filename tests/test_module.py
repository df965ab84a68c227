"""LMModule's optimizer: fused AdamW on the CPU, matrices decayed and gains not, the same step as foreach AdamW."""

import torch

from gqa_sweep.train.module import LMModule

CFG = {"vocab_size": 40, "block_size": 16, "n_layers": 2, "d_model": 32, "n_heads": 4, "n_kv_heads": 2}


def test_cpu_optimizer_is_fused_adamw_with_matrices_decayed_only() -> None:
    module = LMModule(CFG, weight_decay=0.1)
    opt = module.configure_optimizers()["optimizer"]
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["fused"] is True
    decay, no_decay = opt.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == sum(p.numel() for p in module.parameters())


def test_fused_step_equals_foreach_step() -> None:
    torch.manual_seed(0)
    module = LMModule(CFG, lr=1e-2)
    reference = LMModule(CFG, lr=1e-2)
    reference.load_state_dict(module.state_dict())
    start = module.model.lm_head.weight.detach().clone()
    fused = module.configure_optimizers()["optimizer"]
    # the same groups and the same lr (the scheduler has already applied its warm-up factor)
    groups = [{"params": list(g["params"]), "weight_decay": g["weight_decay"], "lr": g["lr"]} for g in fused.param_groups]
    ref_params = dict(reference.named_parameters())
    names = {id(p): n for n, p in module.named_parameters()}
    ref_groups = [{**g, "params": [ref_params[names[id(p)]] for p in g["params"]]} for g in groups]
    foreach = torch.optim.AdamW(ref_groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    x = torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        for m, opt in ((module, fused), (reference, foreach)):
            opt.zero_grad()
            m.training_step((x, x), 0).backward()
            opt.step()
    for name, p in module.named_parameters():
        torch.testing.assert_close(p, ref_params[name], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert (module.model.lm_head.weight - start).abs().max() > 1e-3  # the steps did move the weights
