#!/usr/bin/env python3
"""Calibration of the half-precision factor F (src/conformance/budget.rs, FACTOR = 4).

Runs, for real, on the half-precision twin fixtures (fixtures/<base>-bf16, -fp16):

1. honest implementations, which must pass every twin:
   * ``autocast``   MMSegmentation 1.2.2 itself under torch.autocast(device_type="cpu") with
                    float32 weights (what the twins' outputs/ are: a self-check);
   * ``halfweights`` MMSegmentation with *half weights*: model.to(bfloat16/float16) and half
                    inputs, no autocast; LayerNorm modules and the attention softmax run in
                    float32 (input upcast, output cast back), everything else (linear, conv,
                    BN, GELU, interpolation, the residual stream, the relative-position table)
                    in half;
   * ``ort-fp16``   ONNX Runtime (CPU EP) on an fp16 conversion
                    (onnxruntime.transformers.float16.convert_float_to_float16, keep_io_types,
                    op_block_list LayerNormalization/Softmax/ReduceMean + the ops ORT has no
                    fp16 CPU kernel for) of a torch.onnx.export of MMSegmentation's float32
                    model; graph outputs: the kept stage outputs, decode_head, seg_logits
                    (fp16 twins of whole-inference cases only);
2. planted precision mistakes, each on top of the ``autocast`` run (only the mistake differs):
   * ``ln-half``       LayerNorm statistics in half: mean/var computed from the half-rounded input
                       with every operation rounded to half (two-pass variance);
   * ``softmax-nomax`` attention softmax exp(x)/sum(exp(x)) in half without max subtraction;
   * ``ffn-acc-half``  the FFN's second linear accumulated in half, one term at a time (a long
                       accumulation of fan-in 4C rounded to half at every step);
   * ``relpos-half``   relative_position_bias_table rounded to half before the gather (autocast
                       keeps it float32: the add promotes to float32);
   * ``bnfold-half``   every BatchNorm folded into its preceding conv / transposed conv with the
                       fold computed in half and the folded weight and bias rounded to half.

For each (implementation, twin) it writes OUT/<impl>/<twin>/<name>.npy, runs
``target/release/beit-seg verify --candidate OUT/<impl>/<twin> --precision P --json ...
fixtures/<twin>`` and tables the verdict, the worst tensor (honest) or first failing tensor
(mistakes) and its ratio (error over the F-scaled bound: <= 1 passes; err/budget = F * ratio).

    V=$(ls -d ~/.cache/beit-seg/venv-*)
    $V/bin/python scripts/peers/half_calibration.py --out /tmp/halfcal            # everything
    $V/bin/python scripts/peers/half_calibration.py --out /tmp/halfcal --only honest
    $V/bin/python scripts/peers/half_calibration.py --only ln-half softmax-nomax \
        --twins tiny-whole-fp16 stress-massive-fp16
    $V/bin/python scripts/peers/half_calibration.py --check   # exit 1 unless every honest run
                                                              # passes and the expected mistakes fail

Run one at a time (it uses all CPU threads torch gives it).
"""

import argparse
import json
import os
import subprocess
import sys
import time
import types
from collections import OrderedDict

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'fixtures'))
import generate  # noqa: E402

BIN = os.path.join(ROOT, 'target', 'release', 'beit-seg')
FACTOR = 4.0
SEG_BASES = ['tiny-whole', 'stress-massive', 'var-final-norm', 'var-align-corners', 'ppm-nondiv',
             'slide-b2', 'real-640']
HONEST = ['autocast', 'halfweights', 'ort-fp16']
MISTAKES = ['ln-half', 'softmax-nomax', 'ffn-acc-half', 'relpos-half', 'bnfold-half']
# default twins per implementation kind
HONEST_TWINS = [f'{b}-{p}' for b in SEG_BASES for p in ('bf16', 'fp16')]
ORT_TWINS = ['tiny-whole-fp16', 'stress-massive-fp16', 'var-final-norm-fp16',
             'var-align-corners-fp16', 'ppm-nondiv-fp16']
MISTAKE_TWINS = [f'{b}-{p}' for b in ('tiny-whole', 'stress-massive', 'var-align-corners',
                                      'ppm-nondiv') for p in ('bf16', 'fp16')]

torch = None


def _torch():
    global torch
    if torch is None:
        torch, _, _, _ = generate._import_mmseg()
    return torch


# ----------------------------------------------------------------------------------------------
# building MMSegmentation's model for a twin
# ----------------------------------------------------------------------------------------------

def load_twin(twin):
    t = _torch()
    d = os.path.join(ROOT, 'fixtures', twin)
    case = json.load(open(os.path.join(d, 'case.json')))
    base = twin.rsplit('-', 1)[0]
    spec = generate.CASES[base]
    model = generate.build_model(t, spec)
    npz = np.load(os.path.join(d, case['weights']))
    own = model.state_dict()
    sd = OrderedDict()
    for k, v in own.items():
        sd[k] = t.from_numpy(np.array(npz[k])) if k in npz.files else v   # relative_position_index
    assert set(npz.files) <= set(own), set(npz.files) - set(own)
    model.load_state_dict(sd, strict=True)
    model.eval()
    inputs = np.load(os.path.join(d, case['inputs']['inputs']))
    return case, spec, model, inputs


def run_mmseg(model, spec, inputs, dtype=None):
    """As generate.run_case (hooks on every module, seg_logits, pred; inputs cast to `dtype`),
    without its inference()-vs-second-pass equality check (NaN != NaN under a planted mistake)."""
    t = _torch()
    rec = generate.Recorder(t, model)
    x = t.from_numpy(inputs.copy())
    if dtype is not None:
        x = x.to(dtype)
    with t.no_grad():
        seg_logits = model.inference(x, generate.make_metas(spec))
        out = OrderedDict()
        if spec['model']['test_cfg']['mode'] != 'slide':
            rec.reset()
            rec.enabled = True
            feats = model.extract_feat(x)
            model.decode_head(feats)      # decode_head.predict bypasses the hooks of decode_head
            aux = getattr(model, 'auxiliary_head', None)
            if isinstance(aux, t.nn.ModuleList):
                for head in aux:
                    head(feats)
            elif aux is not None:
                aux(feats)
            rec.enabled = False
            out.update(rec.store)
        out['seg_logits'] = seg_logits.clone()
        out['pred'] = seg_logits.argmax(dim=1)
    return out


def save_candidate(out_dir, case, outs):
    os.makedirs(out_dir, exist_ok=True)
    n = 0
    for name in case['outputs']:
        if name not in outs:
            continue
        v = outs[name]
        v = v.detach().float().numpy() if v.is_floating_point() else v.numpy().astype(np.int64)
        np.save(os.path.join(out_dir, name + '.npy'), np.ascontiguousarray(v))
        n += 1
    return n


# ----------------------------------------------------------------------------------------------
# BEiT attention with pluggable softmax / table (mmseg 1.2.2 BEiTAttention.forward otherwise)
# ----------------------------------------------------------------------------------------------

def patch_attention(model, softmax=None, table=None):
    import torch.nn.functional as F
    from mmseg.models.backbones.beit import BEiTAttention

    def forward(self, x):
        B, N, C = x.shape
        if self.bias == 'qv_bias':
            k_bias = torch.zeros_like(self.v_bias, requires_grad=False)
            qkv_bias = torch.cat((self.q_bias, k_bias, self.v_bias))
            qkv = F.linear(input=x, weight=self.qkv.weight, bias=qkv_bias)
        else:
            qkv = self.qkv(x)
        qkv = qkv.reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * self.scale
        attn = (q @ k.transpose(-2, -1))
        if self.relative_position_bias_table is not None:
            Wh, Ww = self.window_size
            tab = self.relative_position_bias_table
            if table is not None:
                tab = table(tab)
            rpb = tab[self.relative_position_index.view(-1)].view(Wh * Ww + 1, Wh * Ww + 1, -1)
            attn = attn + rpb.permute(2, 0, 1).contiguous().unsqueeze(0)
        attn = softmax(attn) if softmax is not None else attn.softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x

    for m in model.modules():
        if isinstance(m, BEiTAttention):
            m.forward = types.MethodType(forward, m)


# ----------------------------------------------------------------------------------------------
# implementations
# ----------------------------------------------------------------------------------------------

def impl_autocast(model, spec, inputs, dtype):
    with torch.autocast(device_type='cpu', dtype=dtype):
        return run_mmseg(model, spec, inputs)


def impl_halfweights(model, spec, inputs, dtype):
    import torch.nn as nn
    model.to(dtype)
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.float()

            def ln_fwd(self, x, _orig=nn.LayerNorm.forward):
                return _orig(self, x.float()).to(x.dtype)
            m.forward = types.MethodType(ln_fwd, m)
    patch_attention(model, softmax=lambda a: a.float().softmax(dim=-1).to(a.dtype))
    return run_mmseg(model, spec, inputs, dtype=dtype)


def mistake_ln_half(model, spec, inputs, dtype):
    import torch.nn as nn
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            def ln_fwd(self, x):
                h = x.to(dtype)
                mean = h.mean(-1, keepdim=True)                    # rounded to half
                dev = h - mean                                     # half
                var = (dev * dev).mean(-1, keepdim=True)           # squares in half
                y = dev / torch.sqrt(var + torch.tensor(self.eps, dtype=dtype))
                return y * self.weight.to(dtype) + self.bias.to(dtype)
            m.forward = types.MethodType(ln_fwd, m)
    return impl_autocast(model, spec, inputs, dtype)


def mistake_softmax_nomax(model, spec, inputs, dtype):
    def sm(a):
        e = a.to(dtype).exp()
        return e / e.sum(-1, keepdim=True)
    patch_attention(model, softmax=sm)
    return impl_autocast(model, spec, inputs, dtype)


def mistake_ffn_acc_half(model, spec, inputs, dtype):
    from mmseg.models.backbones.beit import BEiTTransformerEncoderLayer
    for layer in model.modules():
        if not isinstance(layer, BEiTTransformerEncoderLayer):
            continue
        lin = layer.ffn.layers[1]

        def fwd(self, x):
            xh = x.to(dtype)
            w = self.weight.to(dtype)
            acc = torch.zeros(x.shape[:-1] + (w.shape[0],), dtype=dtype)
            for k in range(w.shape[1]):                      # one half rounding per term
                acc = acc + xh[..., k:k + 1] * w[:, k]
            return acc + self.bias.to(dtype)
        lin.forward = types.MethodType(fwd, lin)
    return impl_autocast(model, spec, inputs, dtype)


def mistake_relpos_half(model, spec, inputs, dtype):
    patch_attention(model, table=lambda tab: tab.to(dtype))
    return impl_autocast(model, spec, inputs, dtype)


def mistake_bnfold_half(model, spec, inputs, dtype):
    import torch.nn as nn
    from torch.nn.modules.batchnorm import _BatchNorm
    # pairs (conv, bn): ConvModule (conv, bn) and Feature2Pyramid's Sequential (ConvT, BN, ...)
    pairs = []
    for m in model.modules():
        if hasattr(m, 'conv') and isinstance(getattr(m, 'bn', None), _BatchNorm):
            pairs.append((m.conv, m.bn))
        elif isinstance(m, nn.Sequential):
            ch = list(m.children())
            for a, b in zip(ch, ch[1:]):
                if isinstance(a, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(b, _BatchNorm):
                    pairs.append((a, b))
    assert pairs
    with torch.no_grad():
        for conv, bn in pairs:
            g, beta = bn.weight.to(dtype), bn.bias.to(dtype)
            mu, var = bn.running_mean.to(dtype), bn.running_var.to(dtype)
            s = g / torch.sqrt(var + torch.tensor(bn.eps, dtype=dtype))          # half
            cb = conv.bias.to(dtype) if conv.bias is not None else torch.zeros_like(mu)
            b = beta + (cb - mu) * s                                            # half
            w = conv.weight.to(dtype)
            if isinstance(conv, nn.ConvTranspose2d):
                w = w * s.view(1, -1, 1, 1)
            else:
                w = w * s.view(-1, 1, 1, 1)
            conv.weight.copy_(w.float())
            if conv.bias is not None:
                conv.bias.zero_()
            # the BN becomes "+ b": weight 1, mean 0, var 1 - eps (sqrt(var + eps) = 1)
            bn.weight.fill_(1.0)
            bn.bias.copy_(b.float())
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
    return impl_autocast(model, spec, inputs, dtype)


TORCH_IMPLS = {
    'autocast': impl_autocast, 'halfweights': impl_halfweights,
    'ln-half': mistake_ln_half, 'softmax-nomax': mistake_softmax_nomax,
    'ffn-acc-half': mistake_ffn_acc_half, 'relpos-half': mistake_relpos_half,
    'bnfold-half': mistake_bnfold_half,
}


# ----------------------------------------------------------------------------------------------
# ONNX Runtime fp16
# ----------------------------------------------------------------------------------------------

def ort_candidate(model, spec, case, inputs, workdir):
    import onnx
    import onnxruntime as ort
    from onnxruntime.transformers.float16 import convert_float_to_float16
    import re
    names = [n for n in case['outputs'] if n not in ('pred', 'seg_logits', 'decode_head')]
    mods = dict(model.named_modules())
    # name -> (module, index or None): a module's output, or element k of a tuple/list output
    # (neck.{k} of Feature2Pyramid; decode_head.psp_modules.{k}: the PPM's upsampled list)
    where = OrderedDict()
    for n in names:
        if n in mods and not re.fullmatch(r'decode_head\.psp_modules\.\d+', n):
            where[n] = (n, None)
        else:
            pre, _, k = n.rpartition('.')
            assert pre in mods and k.isdigit(), n
            where[n] = (pre, int(k))
    hooked = list(where)
    h, w = inputs.shape[-2:]

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m
            self.store = {}
            for mod_name in sorted({v[0] for v in where.values()}):
                mods[mod_name].register_forward_hook(
                    lambda mod, i, o, n=mod_name: self.store.__setitem__(n, o))

        def forward(self, x):
            self.store.clear()
            feats = self.m.extract_feat(x)
            logits = self.m.decode_head.forward(feats)
            if 'auxiliary_head' in where:
                self.m.auxiliary_head(feats)
            outs = []
            for n in hooked:
                mod_name, k = where[n]
                o = self.store[mod_name]
                outs.append(o if k is None else o[k])
            from mmseg.models.utils import resize
            seg = resize(logits, size=(h, w), mode='bilinear',
                         align_corners=self.m.decode_head.align_corners)
            return tuple(outs) + (logits, seg)

    out_names = hooked + ['decode_head', 'seg_logits']
    os.makedirs(workdir, exist_ok=True)
    f32 = os.path.join(workdir, 'model.onnx')
    x = torch.from_numpy(inputs.copy())
    wrap = Wrap(model).eval()
    with torch.no_grad():
        try:
            torch.onnx.export(wrap, (x,), f32, input_names=['x'], output_names=out_names,
                              opset_version=17, dynamo=False)
            how = 'torch.onnx.export(dynamo=False, opset 17)'
        except Exception as e:   # noqa: BLE001
            print(f'  legacy export failed ({type(e).__name__}: {e}); trying dynamo', flush=True)
            torch.onnx.export(wrap, (x,), f32, input_names=['x'], output_names=out_names,
                              dynamo=True)
            how = 'torch.onnx.export(dynamo=True)'
    m32 = onnx.load(f32)
    block = ['LayerNormalization', 'Softmax', 'ReduceMean', 'Resize', 'Pow', 'Sqrt', 'Erf']
    m16 = convert_float_to_float16(m32, keep_io_types=True, op_block_list=block)
    f16 = os.path.join(workdir, 'model_fp16.onnx')
    onnx.save(m16, f16)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(f16, so, providers=['CPUExecutionProvider'])
    res = sess.run(None, {'x': inputs})
    outs = OrderedDict((n, torch.from_numpy(np.asarray(r, dtype=np.float32)))
                       for n, r in zip(out_names, res))
    outs['pred'] = outs['seg_logits'].argmax(dim=1)
    return outs, how


# ----------------------------------------------------------------------------------------------
# verification
# ----------------------------------------------------------------------------------------------

def verify(cand, twin, precision, json_path):
    cmd = [BIN, 'verify', '--candidate', cand, '--precision', precision, '--json', json_path,
           os.path.join('fixtures', twin)]
    for attempt in range(30):
        if os.path.exists(BIN):
            break
        time.sleep(20)
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    c = json.load(open(json_path))['cases'][0]
    ts = [t for t in c['tensors'] if t.get('budgeted') or t['status'] != 'pass']
    fails = [t for t in ts if t['status'] != 'pass']
    rated = [t for t in ts if t.get('ratio') is not None]
    worst = max(rated, key=lambda t: t['ratio']) if rated else None
    return dict(status=c['status'], rc=p.returncode, message=c.get('message', ''),
                coverage=c.get('coverage'), first_fail=fails[0] if fails else None,
                worst=worst, n_fail=len(fails), n=len(ts), cmd=' '.join(cmd))


def fmt_ratio(r):
    if r is None:
        return '-'
    if r == float('inf') or (isinstance(r, str)):
        return 'inf (non-finite)'
    return f'{r:.3g}'


def row_for(impl, twin, v, extra=''):
    t = v['first_fail'] if v['first_fail'] is not None else v['worst']
    name = t['name'] if t else '-'
    r = t.get('ratio') if t else None
    rs = fmt_ratio(r)
    eb = fmt_ratio(r * FACTOR) if isinstance(r, (int, float)) and r != float('inf') else rs
    if t and t['status'] != 'pass' and r is None:
        note = t.get('note', '')
        rs = eb = (f'inf ({t.get("violations")} non-finite)' if 'non-finite' in note
                   else f'{t.get("violations")} mismatches')
    cov = v['coverage'] or {}
    return (f'| {impl} | {twin} | {v["status"]} | {v["n_fail"]}/{v["n"]} | `{name}` | {rs} | '
            f'{eb} | {cov.get("compared", "?")}/{cov.get("expected", "?")} |{extra}')


HEADER = ('| implementation | twin | verdict | failing/compared | first failing (else worst) '
          'tensor | ratio (≤1 passes) | err/budget (=F·ratio) | coverage |\n'
          '|---|---|---|---|---|---|---|---|')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default='/tmp/half-calibration')
    ap.add_argument('--only', nargs='*', default=None,
                    help='implementations (autocast halfweights ort-fp16 ln-half softmax-nomax '
                         'ffn-acc-half relpos-half bnfold-half) or the groups honest / mistakes')
    ap.add_argument('--twins', nargs='*', default=None, help='restrict to these twins')
    ap.add_argument('--check', action='store_true',
                    help='exit 1 unless every honest run passes and ln-half/softmax-nomax fail '
                         'stress-massive-fp16')
    ap.add_argument('--threads', type=int, default=0)
    a = ap.parse_args(argv)
    t = _torch()
    if a.threads:
        t.set_num_threads(a.threads)
    sel = a.only or (HONEST + MISTAKES)
    impls = []
    for s in sel:
        impls += HONEST if s == 'honest' else MISTAKES if s == 'mistakes' else [s]
    rows = OrderedDict()
    results = []
    for impl in impls:
        twins = ORT_TWINS if impl == 'ort-fp16' else HONEST_TWINS if impl in HONEST else MISTAKE_TWINS
        if a.twins:
            twins = [w for w in a.twins if impl != 'ort-fp16' or w.endswith('-fp16')]
        for twin in twins:
            prec = twin.rsplit('-', 1)[1]
            dtype = getattr(t, generate.HALF[prec])
            t0 = time.time()
            case, spec, model, inputs = load_twin(twin)
            cand = os.path.join(a.out, impl, twin)
            extra = ''
            try:
                if impl == 'ort-fp16':
                    if spec['model']['test_cfg']['mode'] != 'whole':
                        continue
                    outs, how = ort_candidate(model, spec, case, inputs,
                                              os.path.join(a.out, 'onnx', twin))
                    extra = f' {how}'
                else:
                    outs = TORCH_IMPLS[impl](model, spec, inputs, dtype)
            except Exception as e:   # noqa: BLE001
                msg = f'{type(e).__name__}: {str(e)[:200]}'
                print(f'{impl} {twin}: ERROR {msg}', flush=True)
                rows.setdefault(impl, []).append(
                    f'| {impl} | {twin} | error | - | - | - | - | - | {msg}')
                results.append(dict(impl=impl, twin=twin, status='error', message=msg))
                continue
            save_candidate(cand, case, outs)
            v = verify(cand, twin, prec, os.path.join(a.out, impl, twin + '.json'))
            row = row_for(impl, twin, v, extra)
            rows.setdefault(impl, []).append(row)
            w = v['first_fail'] or v['worst']
            results.append(dict(impl=impl, twin=twin, status=v['status'],
                                tensor=w and w['name'], ratio=w and w.get('ratio'),
                                n_fail=v['n_fail'], cmd=v['cmd']))
            print(f'{row}   [{time.time() - t0:.1f}s]', flush=True)
    os.makedirs(a.out, exist_ok=True)
    json.dump(results, open(os.path.join(a.out, 'results.json'), 'w'), indent=1)
    print('\n' + HEADER)
    for impl in impls:
        for r in rows.get(impl, []):
            print(r)
    if a.check:
        bad = [r for r in results if r['impl'] in HONEST and r['status'] != 'pass']
        need = [r for r in results if r['impl'] in ('ln-half', 'softmax-nomax')
                and r['twin'] == 'stress-massive-fp16' and r['status'] == 'pass']
        if bad or need:
            print(f'CHECK FAILED: honest not passing {[(r["impl"], r["twin"]) for r in bad]}; '
                  f'mistakes not caught {[(r["impl"], r["twin"]) for r in need]}')
            return 1
        print('check ok')
    return 0


if __name__ == '__main__':
    sys.exit(main())
