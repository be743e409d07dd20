# The other side of `beit-seg bench --against ENGINE`: one engine at one precision, timed in a
# child Python (the project venv) that stays up between requests, so that the bench can alternate
# blocks of its runs with ours (see src/bench/engines.rs). The Rust side runs this file with
# fixtures/mmseg_import.py in front of it (`import_mmseg`, the one copy of the mmcv.ops stand-in).
#
# Every engine runs MMSegmentation 1.2.2's own EncoderDecoder built from the same config dict,
# with the bench's weights (a .safetensors file of our random state dict) and input values, and
# times what `measure` says:
#   labels       the labels: the logits at input resolution (the final resize included) + argmax
#                (pytorch: `model.inference(img, metas).argmax(1)`; the ONNX graph:
#                `encode_decode(img, metas).argmax(1)`, the same network, since the bench's crop
#                is the whole input: one window);
#   head-logits  `decode_head.forward(extract_feat(img))`: the decode head's 1/4-resolution
#                logits, no final resize, no argmax.
# Engines:
#   pytorch      eager under no_grad; bf16/fp16 under `torch.autocast` (how mmengine runs
#                MMSegmentation in half precision);
#   onnxruntime  a dynamo ONNX export of the measured function, made once and cached by a key of
#   openvino     config, size, seed and measure; OpenVINO with INFERENCE_PRECISION_HINT set
#                explicitly (on a CPU with AMX its default would be bf16).
#
# The export is its own child (`engine` = `export`, prints `EXPORTED <json>` and ends), so the
# ONNX engines' children never import torch and their peak RSS is their own.
#
# Protocol on stdout: `READY <json>` once built; `run` -> `TIME <seconds>`; `quit` -> `DONE <json>`.
import contextlib
import hashlib
import json
import os
import resource
import sys
import time

args = json.loads(sys.argv[1])
ENGINE, PRECISION, DEVICE, MEASURE = args['engine'], args['precision'], args['device'], args['measure']
import numpy as np  # noqa: E402

if ENGINE in ('pytorch', 'export'):
    torch, _mmcv, _mmengine, mmseg = import_mmseg()  # noqa: F821 (defined by mmseg_import.py)
    torch.set_num_threads(args['threads'])


def build_model():
    """MMSegmentation's EncoderDecoder with the bench's weights, in eval mode."""
    from mmengine.config import ConfigDict
    from mmseg.registry import MODELS
    m = args['model']
    m['backbone']['img_size'] = tuple(m['backbone']['img_size'])
    cfg = dict(type='EncoderDecoder', backbone=m['backbone'], neck=m['neck'],
               decode_head=m['decode_head'], auxiliary_head=m.get('auxiliary_head'),
               test_cfg=ConfigDict(m.get('test_cfg') or dict(mode='whole')))
    model = MODELS.build(cfg).eval()
    from safetensors.torch import load_file
    missing, unexpected = model.load_state_dict(load_file(args['weights']), strict=False)
    # Buffers MMSegmentation computes itself (the rel-pos index) or counts (BN's batches).
    missing = [k for k in missing if not k.endswith(('relative_position_index', 'num_batches_tracked'))]
    if missing or unexpected:
        raise SystemExit(f'the bench weights do not fit the model: missing {missing[:5]}, '
                         f'unexpected {unexpected[:5]}')
    return model


s = args['size']
c, y, x = np.meshgrid(np.arange(3), np.arange(s), np.arange(s), indexing='ij')
IMG = (((c * 7 + y * 3 + x) % 17) / 17.0 - 0.5).astype(np.float32)[None]  # = bench_input
METAS = [dict(ori_shape=(s, s), img_shape=(s, s), pad_shape=(s, s), padding_size=[0, 0, 0, 0])]


def export_folder():
    """Where the export of this config, size and seed lives (the key covers what decides its
    contents; the pinned venv fixes torch and mmseg)."""
    key = hashlib.sha256(json.dumps(dict(model=args['model'], size=s, seed=args['seed'], measure=MEASURE, v=1),
                                    sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(args['cache_dir'], key)


def measured(model):
    """The function the ONNX graph holds: `encode_decode(img).argmax(1)` (one window = the whole
    crop) or `decode_head.forward(extract_feat(img))`."""
    if MEASURE == 'labels':
        return lambda img: model.encode_decode(img, METAS).argmax(1)
    return lambda img: model.decode_head.forward(model.extract_feat(img))


def export():
    """The dynamo export of `measured(model)`, written to a temporary folder and renamed, so a
    killed export leaves no half file behind."""
    folder = export_folder()
    if os.path.exists(os.path.join(folder, 'model.onnx')):
        return f'cached export {folder}'
    model = build_model()
    fn = measured(model)

    class Measured(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, img):
            return fn(img)
    os.makedirs(args['cache_dir'], exist_ok=True)
    tmp = folder + f'.tmp{os.getpid()}'
    os.makedirs(tmp, exist_ok=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(Measured().eval(), (torch.from_numpy(IMG),), os.path.join(tmp, 'model.onnx'),
                          input_names=['img'], output_names=['out'], opset_version=18,
                          dynamo=True, external_data=True)
    os.replace(tmp, folder)
    return f'exported to {folder} in {time.perf_counter() - t0:.0f} s (torch {torch.__version__})'


GRAPH = {'labels': 'encode_decode(...).argmax(1)', 'head-logits': 'decode_head.forward(extract_feat(img))'}


def onnx_path():
    path = os.path.join(export_folder(), 'model.onnx')
    if not os.path.exists(path):
        raise SystemExit(f'no ONNX export at {path} (the export child did not make it)')
    return path


def pytorch_runner():
    model = build_model()
    dev = torch.device(DEVICE)
    if dev.type == 'cuda':
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    model = model.to(dev)
    img = torch.from_numpy(IMG).to(dev)
    half = dict(bf16=torch.bfloat16, fp16=torch.float16).get(PRECISION)

    if MEASURE == 'labels':
        fn, what = (lambda: model.inference(img, METAS).argmax(1)), 'model.inference(...).argmax(1)'
    else:
        fn, what = measured(model), 'decode_head.forward(extract_feat(img))'

    def once():
        cast = torch.autocast(dev.type, dtype=half) if half else contextlib.nullcontext()
        with torch.no_grad(), cast:
            fn() if MEASURE == 'labels' else fn(img)
        if dev.type == 'cuda':
            torch.cuda.synchronize(dev)
    what += f' under torch.autocast({PRECISION})' if half else ''
    return once, what, f'torch {torch.__version__}, mmseg {mmseg.__version__}'


def onnxruntime_runner():
    import onnxruntime as ort
    path = onnx_path()
    so = ort.SessionOptions()
    so.intra_op_num_threads = args['threads']
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=['CPUExecutionProvider'])

    def once():
        sess.run(None, {'img': IMG})
    return once, f'dynamo ONNX export of {GRAPH[MEASURE]}', f'onnxruntime {ort.__version__}'


def openvino_runner():
    import openvino as ov
    path = onnx_path()
    core = ov.Core()
    hint = dict(fp32='f32', bf16='bf16', fp16='f16')[PRECISION]
    caps = core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES')
    if PRECISION != 'fp32' and PRECISION.upper() not in caps:
        raise SystemExit(f'OpenVINO offers no {PRECISION} on this CPU (capabilities {caps})')
    compiled = core.compile_model(core.read_model(path), 'CPU', {
        'INFERENCE_NUM_THREADS': args['threads'], 'PERFORMANCE_HINT': 'LATENCY',
        'INFERENCE_PRECISION_HINT': hint})
    got = compiled.get_property('INFERENCE_PRECISION_HINT').get_type_name()
    request = compiled.create_infer_request()

    def once():
        request.infer({0: IMG})
    return (once, f'dynamo ONNX export of {GRAPH[MEASURE]}, inference precision {got}',
            f'openvino {ov.get_version()}')


if ENGINE == 'export':
    print('EXPORTED ' + json.dumps(dict(note=export())), flush=True)
    sys.exit(0)
RUNNERS = dict(pytorch=pytorch_runner, onnxruntime=onnxruntime_runner, openvino=openvino_runner)
once, WHAT, VERSIONS = RUNNERS[ENGINE]()


def timed():
    t = time.perf_counter()
    once()
    return time.perf_counter() - t


print('READY ' + json.dumps(dict(versions=f'{VERSIONS}, threads {args["threads"]}', what=WHAT)),
      flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == 'run':
        print('TIME %r' % timed(), flush=True)
    elif cmd == 'quit':
        break
def peak_rss_bytes():
    """VmHWM of this process. Not getrusage's ru_maxrss: Linux keeps that across execve, so it
    would include the RSS of the bench process this child was forked from."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


print('DONE ' + json.dumps(dict(peak_rss_bytes=peak_rss_bytes())), flush=True)
