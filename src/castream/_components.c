/* Largest 8-connected component at every threshold of a saliency map, in one union-find pass.
 *
 * castream's BoxAcc (thesis (1.20)) needs, for each threshold eta_j of an ascending list, the bounding box
 * of the largest 8-connected component of {map > eta_j}. These sets are nested: {map > eta_j} grows as j
 * falls. The caller passes each pixel's level L(p) = #{j : eta_j < map(p)}, so that p lies in {map > eta_j}
 * exactly when L(p) > j. Pixels are added in decreasing level order and merged with their already-added
 * 8-neighbours (union by size, path halving); after all pixels of level l are in, the components are those
 * of {map > eta_(l-1)}. The largest one is tracked incrementally: component sizes only grow, so the best
 * component can only be replaced by one that just changed. Ties are broken as scipy.ndimage.label followed
 * by argmax of the sizes does: the component whose first pixel in raster order comes first.
 *
 * largest_boxes(levels, height, width, count) -> bytes holding count * 4 int32 (x0, y0, x1, y1), exclusive
 * ends, or -1 (four times) where {map > eta_j} is empty. levels: a C-contiguous buffer of height * width
 * int32 values in [0, count].
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int32_t *parent, *size, *first, *x0, *y0, *x1, *y1;
} Forest;

static int32_t find(int32_t *parent, int32_t p) {
    while (parent[p] != p) {
        parent[p] = parent[parent[p]];
        p = parent[p];
    }
    return p;
}

/* Whether component a is larger than b, or as large with an earlier first pixel. */
static int better(const Forest *f, int32_t a, int32_t b) {
    return b < 0 || f->size[a] > f->size[b] || (f->size[a] == f->size[b] && f->first[a] < f->first[b]);
}

static int32_t unite(Forest *f, int32_t a, int32_t b) {
    a = find(f->parent, a);
    b = find(f->parent, b);
    if (a == b) return a;
    if (f->size[a] < f->size[b]) { int32_t t = a; a = b; b = t; }
    f->parent[b] = a;
    f->size[a] += f->size[b];
    if (f->first[b] < f->first[a]) f->first[a] = f->first[b];
    if (f->x0[b] < f->x0[a]) f->x0[a] = f->x0[b];
    if (f->y0[b] < f->y0[a]) f->y0[a] = f->y0[b];
    if (f->x1[b] > f->x1[a]) f->x1[a] = f->x1[b];
    if (f->y1[b] > f->y1[a]) f->y1[a] = f->y1[b];
    return a;
}

static PyObject *largest_boxes(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t height, width, count;
    if (!PyArg_ParseTuple(args, "y*nnn", &view, &height, &width, &count)) return NULL;
    Py_ssize_t n = height * width;
    if (height <= 0 || width <= 0 || count <= 0 || n > INT32_MAX || view.len != n * (Py_ssize_t)sizeof(int32_t)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "largest_boxes: levels must hold height * width int32 values");
        return NULL;
    }
    const int32_t *level = (const int32_t *)view.buf;
    PyObject *result = PyBytes_FromStringAndSize(NULL, count * 4 * (Py_ssize_t)sizeof(int32_t));
    int32_t *memory = (int32_t *)malloc(sizeof(int32_t) * (size_t)(9 * n + count + 2));
    if (result == NULL || memory == NULL) {
        PyBuffer_Release(&view);
        Py_XDECREF(result);
        free(memory);
        return PyErr_NoMemory();
    }
    int32_t *out = (int32_t *)PyBytes_AS_STRING(result);
    Forest f = {memory, memory + n, memory + 2 * n, memory + 3 * n, memory + 4 * n, memory + 5 * n,
                memory + 6 * n};
    int32_t *order = memory + 7 * n, *active = memory + 8 * n, *start = memory + 9 * n;
    int bad = 0;

    Py_BEGIN_ALLOW_THREADS
    /* counting sort of the pixels by level, raster order within a level */
    memset(start, 0, sizeof(int32_t) * (size_t)(count + 2));
    for (Py_ssize_t p = 0; p < n; p++) {
        if (level[p] < 0 || level[p] > count) { bad = 1; break; }
        start[level[p] + 1]++;
    }
    if (!bad) {
        for (Py_ssize_t l = 0; l <= count; l++) start[l + 1] += start[l];
        for (Py_ssize_t p = 0; p < n; p++) order[start[level[p]]++] = (int32_t)p;
        /* start[l] is now the end of level l's run; level l begins at start[l - 1] (0 for l = 0) */
        memset(active, 0, sizeof(int32_t) * (size_t)n);
        int32_t best = -1;
        for (Py_ssize_t l = count; l >= 1; l--) {
            for (int32_t k = start[l - 1]; k < start[l]; k++) {
                int32_t p = order[k], y = (int32_t)(p / width), x = (int32_t)(p % width);
                f.parent[p] = p; f.size[p] = 1; f.first[p] = p;
                f.x0[p] = x; f.x1[p] = x; f.y0[p] = y; f.y1[p] = y;
                active[p] = 1;
                int32_t root = p;
                for (int dy = -1; dy <= 1; dy++) {
                    int32_t yy = y + dy;
                    if (yy < 0 || yy >= height) continue;
                    for (int dx = -1; dx <= 1; dx++) {
                        int32_t xx = x + dx;
                        if ((dx == 0 && dy == 0) || xx < 0 || xx >= width) continue;
                        int32_t q = yy * (int32_t)width + xx;
                        if (!active[q]) continue;
                        int32_t other = find(f.parent, q);
                        if (other == root) continue;
                        int32_t merged = unite(&f, root, other);
                        if (best == root || best == other) best = merged;
                        root = merged;
                    }
                }
                if (better(&f, root, best)) best = root;
            }
            int32_t *box = out + 4 * (l - 1);
            if (best < 0) {
                box[0] = box[1] = box[2] = box[3] = -1;
            } else {
                box[0] = f.x0[best]; box[1] = f.y0[best]; box[2] = f.x1[best] + 1; box[3] = f.y1[best] + 1;
            }
        }
    }
    Py_END_ALLOW_THREADS

    free(memory);
    PyBuffer_Release(&view);
    if (bad) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_ValueError, "largest_boxes: levels must lie in [0, count]");
        return NULL;
    }
    return result;
}

static PyMethodDef methods[] = {
    {"largest_boxes", largest_boxes, METH_VARARGS,
     "largest_boxes(levels, height, width, count) -> bytes of count * 4 int32 boxes (see the source)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_components", NULL, -1, methods};

PyMODINIT_FUNC PyInit__components(void) { return PyModule_Create(&module); }
