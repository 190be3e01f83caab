# Issue 13, acceptance 5: FitLM's PEFT output loads into the PyTorch reference's naming and gives FitLM's loss.
# Runs ../shared/tools/torch-lora-reference.py's own model code (everything before its checks), then replaces its
# random adapter by the PEFT folder given, and prints the mean next-token loss on the batch.
# usage: /usr/bin/python3 bench/peft-in-torch.py MODEL_DIR BATCH.json PEFT_DIR
#   compare with: fitlm finetune -m MODEL_DIR --train-ids BATCH.json --adapter-init PEFT_DIR --steps 1 --lr 1e-9 -o TMP
import os, sys
ref = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "tools", "torch-lora-reference.py")
src = open(ref).read()
src = src[:src.index("# 1. this implementation reproduces")]
src = src.replace("mdir, ids_path, out = sys.argv[1:4]", "mdir, ids_path, adapter_dir = sys.argv[1:4]").replace("os.makedirs(out, exist_ok=True)", "")
src += '''
loaded = read_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"))
missing, extra = set(lora) - set(loaded), set(loaded) - set(lora)
assert not missing and not extra, f"names differ: missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}"
for k in lora:
    assert loaded[k].shape == lora[k].shape, k
    lora[k] = loaded[k]
ids = torch.tensor(json.load(open(ids_path)))
with torch.no_grad():
    lo = forward(ids)
    loss = torch.nn.functional.cross_entropy(lo[:, :-1].reshape(-1, lo.shape[-1]), ids[:, 1:].reshape(-1)).item()
print(f"{len(loaded)} tensors with the reference's names and shapes; torch loss with this adapter: {loss:.7f}")
'''
exec(compile(src, ref, "exec"))
