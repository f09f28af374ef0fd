// hbt-encode's BERT / XLM-R forward on the CPU in bf16, on PyTorch's C++ library without its
// Python package (see native_bert.py for why). Every step is the ATen op, or the C kernel, that
// fast_encoder.py's FastBertEncoder and BiEncoder run for the same model, in the same order, so
// the embeddings are the same bit for bit (tests/test_native_bert.py).
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/cat.h>
#include <c10/core/InferenceMode.h>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <vector>

using at::Tensor;

namespace {

// cpu_attention.py's kernel (amx_attention.c or avx512_attention.c) and add_layer_norm.c,
// loaded by Python and handed over as addresses
typedef int (*AttentionFn)(const void *, const int32_t *, void *, int, int, int, int, float);
typedef int (*AddNormFn)(const void *, const void *, const void *, const void *, void *, long,
                         int, float);

enum Pooling { MEAN = 0, CLS = 1 };

struct Layer {
    Tensor qkv_w, qkv_b, out_w, out_b, norm1_w, norm1_b, ffn1_w, ffn1_b, ffn2_w, ffn2_b,
        norm2_w, norm2_b;
};

struct Model {
    Tensor word;  // as stored: rows are cast after the lookup (fast_encoder.py says why)
    Tensor position, token_type0, norm_w, norm_b;
    std::vector<Layer> layers;
    int heads, head_size;
    double eps;  // layer_norm's, as Python passes it; the C kernel gets it as a float
    float scale;
    long position_offset;  // XLM-R's padding_idx, or -1 for BERT's 0, 1, 2, ...
    int pooling, normalize;
    AttentionFn attention;
    AddNormFn add_norm;
};

Tensor linear(const Tensor &x, const Tensor &w, const Tensor &b, bool gelu) {
    // oneDNN's fused linear, as FastBertEncoder._linear calls it
    static auto op = c10::Dispatcher::singleton()
        .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
        .typed<Tensor(const Tensor &, const Tensor &, const std::optional<Tensor> &,
                      c10::string_view, c10::List<std::optional<at::Scalar>>,
                      std::optional<c10::string_view>)>();
    return op.call(x, w, b, gelu ? "gelu" : "none", c10::List<std::optional<at::Scalar>>(),
                   c10::string_view("none"));
}

Tensor add_norm(const Model &m, const Tensor &a, const Tensor &b, const Tensor &w,
                const Tensor &bias) {
    Tensor out = at::empty(a.sizes(), a.options());
    long width = a.size(-1);
    if (m.add_norm(a.data_ptr(), b.data_ptr(), w.data_ptr(), bias.data_ptr(), out.data_ptr(),
                   a.numel() / width, (int)width, (float)m.eps) != 0)
        throw std::runtime_error("add_layer_norm refused its input");
    return out;
}

// The error's message without PyTorch's C++ backtrace, for Python to raise.
int report(const std::exception &e, char *error, int size) {
    auto *c10_error = dynamic_cast<const c10::Error *>(&e);
    snprintf(error, size, "%s", c10_error ? c10_error->what_without_backtrace() : e.what());
    return -1;
}

// `weights` points at 5 + 16 * layers blobs in load order (native_bert.py, WEIGHT_ORDER)
Tensor blob(void *data, int dtype, long rows, long cols) {
    auto type = dtype == 0 ? at::kFloat : dtype == 1 ? at::kHalf : at::kBFloat16;
    auto options = at::TensorOptions().dtype(type);
    return cols ? at::from_blob(data, {rows, cols}, options) : at::from_blob(data, {rows}, options);
}

}  // namespace

extern "C" {

void *hbt_bert_load(void **data, const int *dtypes, const long *shapes, int layers, int heads,
                    double eps, float scale, long position_offset, int pooling, int normalize,
                    void *attention, void *add_norm, char *error, int error_size) {
    try {
        c10::InferenceMode guard;
        auto *m = new Model();
        int n = 0;
        auto next = [&](bool cast) {
            Tensor t = blob(data[n], dtypes[n], shapes[2 * n], shapes[2 * n + 1]);
            ++n;
            return cast ? t.to(at::kBFloat16) : t;
        };
        m->word = next(false);
        m->position = next(true);
        m->token_type0 = next(true)[0];
        m->norm_w = next(true);
        m->norm_b = next(true);
        for (int i = 0; i < layers; ++i) {
            Layer l;
            Tensor q_w = next(false), q_b = next(false), k_w = next(false), k_b = next(false),
                   v_w = next(false), v_b = next(false);
            // one matmul for query, key and value; cat then cast = cast then cat, per element
            l.qkv_w = at::cat({q_w, k_w, v_w}).to(at::kBFloat16);
            l.qkv_b = at::cat({q_b, k_b, v_b}).to(at::kBFloat16);
            l.out_w = next(true), l.out_b = next(true);
            l.norm1_w = next(true), l.norm1_b = next(true);
            l.ffn1_w = next(true), l.ffn1_b = next(true);
            l.ffn2_w = next(true), l.ffn2_b = next(true);
            l.norm2_w = next(true), l.norm2_b = next(true);
            m->layers.push_back(l);
        }
        m->heads = heads;
        m->head_size = (int)(m->norm_w.size(0) / heads);
        m->eps = eps;
        m->scale = scale;
        m->position_offset = position_offset;
        m->pooling = pooling;
        m->normalize = normalize;
        m->attention = (AttentionFn)attention;
        m->add_norm = (AddNormFn)add_norm;
        return m;
    } catch (const std::exception &e) {
        report(e, error, error_size);
        return nullptr;
    }
}

void hbt_bert_free(void *model) { delete (Model *)model; }

// Embeddings (float32, [batch, hidden]) of `batch` rows of `length` token ids (int64, padded
// on the right), of which the first lengths[i] are real. Returns 0, or -1 with a message in
// `error`.
int hbt_bert_embed(void *model, const int64_t *ids, const int32_t *lengths, int batch,
                   int length, float *out, char *error, int error_size) {
    try {
        c10::InferenceMode guard;
        const Model &m = *(const Model *)model;
        auto longs = at::TensorOptions().dtype(at::kLong);
        Tensor input_ids = at::from_blob((void *)ids, {batch, length}, longs);
        Tensor lens = at::from_blob((void *)lengths, {batch}, at::TensorOptions().dtype(at::kInt));
        Tensor columns = at::arange(length, longs);
        Tensor mask = columns.unsqueeze(0).lt(lens.unsqueeze(1)).to(at::kLong);
        Tensor real = input_ids.ne(m.position_offset).to(at::kLong);  // fast_encoder.position_ids
        Tensor positions = m.position_offset < 0 ? columns.expand({batch, length})
                                                 : real.cumsum(1).mul(real).add(m.position_offset);
        long hidden = m.norm_w.size(0);
        Tensor x = at::index_select(m.word, 0, input_ids.reshape(-1))
                       .view({batch, length, hidden})
                       .to(m.position.scalar_type());
        x = x.add(at::index_select(m.position, 0, positions.reshape(-1))
                      .view({batch, length, hidden}));
        x = x.add(m.token_type0);
        x = at::layer_norm(x, {hidden}, m.norm_w, m.norm_b, m.eps);
        for (const Layer &l : m.layers) {
            Tensor qkv = linear(x, l.qkv_w, l.qkv_b, false).contiguous();
            Tensor context = at::empty({batch, length, hidden}, qkv.options());
            if (m.attention(qkv.data_ptr(), lengths, context.data_ptr(), batch, length, m.heads,
                            m.head_size, m.scale) != 0)
                throw std::runtime_error("the attention kernel refused its input");
            x = add_norm(m, linear(context, l.out_w, l.out_b, false), x, l.norm1_w, l.norm1_b);
            Tensor inner = linear(x, l.ffn1_w, l.ffn1_b, true);
            x = add_norm(m, linear(inner, l.ffn2_w, l.ffn2_b, false), x, l.norm2_w, l.norm2_b);
        }
        Tensor emb;
        if (m.pooling == CLS) {
            emb = x.select(1, 0);
        } else {  // encoder.pool: summed in fp32, the bf16 mask multiplied in
            Tensor weights = mask.unsqueeze(-1).to(x.scalar_type());
            emb = x.mul(weights).sum(1, false, at::kFloat)
                      .div(weights.sum(1, false, at::kFloat).clamp(1));
        }
        if (m.normalize) {  // F.normalize(emb.float(), dim=-1)
            emb = emb.to(at::kFloat);
            emb = emb.div(emb.norm(2, {-1}, true).clamp_min(1e-12).expand_as(emb));
        }
        at::from_blob(out, {batch, hidden}, at::TensorOptions().dtype(at::kFloat))
            .copy_(emb.to(at::kFloat));
        return 0;
    } catch (const std::exception &e) {
        return report(e, error, error_size);
    }
}

}  // extern "C"
