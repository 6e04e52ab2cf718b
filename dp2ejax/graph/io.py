"""Reading and writing graphs: edge lists, Matrix Market and ``.npz`` files.

Every loader returns a :class:`~dp2ejax.graph.data.Graph`; a missing file raises
``FileNotFoundError`` naming it, and a malformed one ``ValueError`` naming the file, the 1-based
line and what is wrong (``"edges.txt, line 3: non-integer node id '1.5'"``). Text files ending in
``.gz`` are read and written through gzip. :func:`load_graph` and :func:`save_graph` pick the
format from the file's extension.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from dp2ejax.graph.data import Graph, _is_symmetric

EDGE_LIST_SUFFIXES = (".txt", ".edges", ".el", ".csv", ".tsv")
MTX_SUFFIXES = (".mtx",)
NPZ_SUFFIXES = (".npz",)
_NODES_HEADER = re.compile(r"\bnodes\s*[:=]\s*(\d+)", re.IGNORECASE)


# --- edge lists ----------------------------------------------------------------------------------


def load_edge_list(
    path: str | Path,
    *,
    directed: bool = False,
    weighted: bool | None = None,
    comment: str | None = "#",
    delimiter: str | None = None,
    num_nodes: int | None = None,
    dtype: Any = np.float32,
    name: str | None = None,
) -> Graph:
    """Reads an edge list: one edge ``u v`` or ``u v w`` per line, 0-based integer node ids.

    Text after ``comment`` is ignored, as are blank lines. A comment before the first edge
    that says ``Nodes: N`` (as SNAP's headers and :func:`save_edge_list` do) sets the number of
    nodes when ``num_nodes`` is not given; otherwise it is the largest id plus one. Repeated
    edges (for an undirected graph, in either direction) are merged: an unweighted graph keeps
    1, a weighted one the last weight listed. Self loops are kept.

    Args:
      path: the file (``.gz`` for gzip).
      directed: whether ``u v`` is the edge ``u -> v`` only; undirected graphs get both.
      weighted: read the third column as weights (``True``: every line has three columns;
        ``False``: a third column is checked but ignored; ``None``: weighted if the first edge
        line has three columns, and then every line must).
      comment: the comment marker, or ``None`` for none.
      delimiter: the column separator; ``None`` splits on whitespace and commas.
      num_nodes: the number of nodes; ids must be below it.
      dtype: the adjacency's value dtype.
      name: the graph's name (default: the file name without extensions).

    Returns:
      The ``Graph`` (no features or labels).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: a malformed line: wrong number of columns, a non-integer, negative or
        out-of-range node id, a non-numeric or non-finite weight.

    Example:
      >>> import pathlib, tempfile
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "g.txt"
      >>> _ = path.write_text("# a triangle\\n0 1\\n1 2\\n2 0\\n")
      >>> g = load_edge_list(path)
      >>> g.num_nodes, g.num_edges, g.directed
      (3, 3, False)
    """
    path = _existing(path)
    if weighted is None:
        allowed = None  # set by the first edge line
    else:
        allowed = (3,) if weighted else (2, 3)
    header_nodes = None
    rows: list[int] = []
    cols: list[int] = []
    weights: list[float] = []
    with _open_text(path, "r") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.split(comment, 1)[0] if comment else raw
            if not line.strip():
                if comment and not rows and header_nodes is None and comment in raw:
                    found = _NODES_HEADER.search(raw.split(comment, 1)[1])
                    header_nodes = int(found.group(1)) if found else None
                continue
            where = f"{path}, line {lineno}"
            if delimiter is None:
                fields = line.replace(",", " ").split()
            else:
                fields = [t.strip() for t in line.split(delimiter)]
                if "" in fields:
                    raise ValueError(f"{where}: empty field in {line.strip()!r}")
            if allowed is None:
                if len(fields) not in (2, 3):
                    raise ValueError(f"{where}: expected 2 or 3 columns (u v [weight]), got "
                                     f"{len(fields)} in {line.strip()!r}")
                allowed = (len(fields),)
                weighted = len(fields) == 3
            if len(fields) not in allowed:
                expected = " or ".join(str(c) for c in allowed)
                raise ValueError(f"{where}: expected {expected} columns "
                                 f"({'u v weight' if weighted else 'u v'}), got {len(fields)} "
                                 f"in {line.strip()!r}")
            u = _parse_node_id(fields[0], where, num_nodes)
            v = _parse_node_id(fields[1], where, num_nodes)
            if len(fields) == 3:
                w = _parse_float(fields[2], where, "weight")
                if weighted:
                    weights.append(w)
            rows.append(u)
            cols.append(v)
    rows_np = np.asarray(rows, dtype=np.int64)
    cols_np = np.asarray(cols, dtype=np.int64)
    n = num_nodes if num_nodes is not None else header_nodes
    largest = int(max(rows_np.max(), cols_np.max())) + 1 if len(rows) else 0
    if n is None or n < largest:  # no size given, or a header that undercounts
        n = largest
    data = np.asarray(weights, dtype=dtype) if weighted else np.ones(len(rows), dtype=dtype)
    return _graph_from_edges(rows_np, cols_np, data, int(n), directed,
                             name=name or _stem(path))


def save_edge_list(
    graph: Graph,
    path: str | Path,
    *,
    weighted: bool | None = None,
    delimiter: str = " ",
    header: bool = True,
) -> None:
    """Writes ``graph``'s edges as an edge list that :func:`load_edge_list` reads back.

    Undirected graphs list each edge once (``u <= v``). Only the adjacency is written; features
    and labels need :func:`save_npz`. The header comment records the number of nodes, so that
    isolated nodes survive the round trip.

    Args:
      graph: the graph (an undirected one must have a symmetric adjacency).
      path: the file (``.gz`` for gzip).
      weighted: write a weight column (``None``: unless every weight is 1).
      delimiter: the column separator.
      header: start with ``#`` comment lines naming the graph and its sizes.

    Example:
      >>> import pathlib, tempfile
      >>> from dp2ejax.graph.generators import networkx_graph
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "karate.txt"
      >>> save_edge_list(networkx_graph("karate_club"), path)
      >>> load_edge_list(path).num_edges
      78
    """
    rows, cols, data = _edges_to_write(graph, lower=False)
    if weighted is None:
        weighted = bool(np.any(data != 1))
    with _open_text(Path(path), "w") as f:
        if header:
            f.write(f"# {graph.name}\n# Nodes: {graph.num_nodes} Edges: {len(rows)} "
                    f"directed: {str(graph.directed).lower()}\n")
        table = np.stack([rows, cols], axis=1)
        if weighted:
            fmt = _value_format(data.dtype)
            text = [f"{u}{delimiter}{v}{delimiter}{fmt % w}" for (u, v), w in zip(
                table.tolist(), data.tolist(), strict=True)]
        else:
            text = [f"{u}{delimiter}{v}" for u, v in table.tolist()]
        f.write("\n".join(text) + ("\n" if text else ""))


# --- Matrix Market -------------------------------------------------------------------------------


def load_mtx(
    path: str | Path,
    *,
    dtype: Any = np.float32,
    directed: bool | None = None,
    name: str | None = None,
) -> Graph:
    """Reads a Matrix Market coordinate file (``real``/``integer``/``pattern``; ``general``/
    ``symmetric``/``skew-symmetric``) as the adjacency of a graph.

    The file is parsed here, line by line, so that errors name the line: the banner
    (``%%MatrixMarket matrix coordinate <field> <symmetry>``), the size line ``rows cols
    entries`` (a square matrix), then exactly ``entries`` lines ``i j [value]`` with 1-based
    indices; ``%`` comment lines and blank lines may appear anywhere after the banner.
    Symmetric and skew-symmetric files hold the lower triangle (``i >= j``, and ``i > j`` for
    skew-symmetric), mirrored on loading (negated for skew-symmetric). Repeated entries are
    summed. Pattern entries are 1.

    Args:
      path: the file (``.gz`` for gzip).
      dtype: the adjacency's value dtype.
      directed: whether the graph is directed; ``None``: undirected for ``symmetric`` files,
        directed for ``skew-symmetric`` ones, and for ``general`` ones directed unless the
        matrix is symmetric.
      name: the graph's name (default: the file name without extensions).

    Returns:
      The ``Graph``.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: a bad banner or size line, an unsupported format (array, complex,
        hermitian), a non-square matrix, an entry with the wrong number of columns, an index
        out of range, a non-numeric value, an upper-triangle entry in a symmetric file, or more
        or fewer entries than the size line declares.

    Example:
      >>> import pathlib, tempfile
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "g.mtx"
      >>> _ = path.write_text("%%MatrixMarket matrix coordinate pattern symmetric\\n"
      ...                     "3 3 2\\n2 1\\n3 2\\n")
      >>> g = load_mtx(path)
      >>> g.num_nodes, g.num_edges, g.directed
      (3, 2, False)
    """
    path = _existing(path)
    with _open_text(path, "r") as f:
        lines = enumerate(f, 1)
        field, symmetry = _read_banner(path, lines)
        size_line, (n_rows, n_cols, count) = _read_size_line(path, lines)
        if n_rows != n_cols:
            raise ValueError(f"{path}, line {size_line}: expected a square matrix (an "
                             f"adjacency), got {n_rows} x {n_cols}")
        n = n_rows
        rows = np.empty(count, np.int64)
        cols = np.empty(count, np.int64)
        values = np.ones(count, np.float64 if field == "real" else np.int64)
        width = 2 if field == "pattern" else 3
        seen = 0
        last = size_line
        for lineno, raw in lines:
            last = lineno
            line = raw.strip()
            if not line or line.startswith("%"):
                continue
            where = f"{path}, line {lineno}"
            if seen == count:
                raise ValueError(f"{where}: more entries than the {count} declared on line "
                                 f"{size_line}")
            fields = line.split()
            if len(fields) != width:
                raise ValueError(f"{where}: expected {width} columns "
                                 f"({'i j' if width == 2 else 'i j value'}) for a {field} "
                                 f"matrix, got {len(fields)} in {line!r}")
            i = _parse_mtx_index(fields[0], where, "row", n)
            j = _parse_mtx_index(fields[1], where, "column", n)
            if symmetry != "general" and i < j:
                raise ValueError(f"{where}: entry ({i}, {j}) above the diagonal in a {symmetry} "
                                 "file (only the lower triangle is stored)")
            if symmetry == "skew-symmetric" and i == j:
                raise ValueError(f"{where}: diagonal entry ({i}, {j}) in a skew-symmetric file")
            if field == "integer":
                values[seen] = _parse_int(fields[2], where, "value")
            elif field == "real":
                values[seen] = _parse_float(fields[2], where, "value", finite=False)
            rows[seen], cols[seen] = i - 1, j - 1
            seen += 1
    if seen < count:
        raise ValueError(f"{path}, line {last}: the file ends after {seen} entries, but line "
                         f"{size_line} declares {count}")
    if symmetry != "general":
        off = rows != cols
        sign = -1 if symmetry == "skew-symmetric" else 1
        rows, cols = np.concatenate([rows, cols[off]]), np.concatenate([cols, rows[off]])
        values = np.concatenate([values, sign * values[off]])
    import scipy.sparse as sp

    matrix = sp.csr_array((values.astype(dtype), (rows, cols)), shape=(n, n))
    if directed is None and symmetry != "general":
        directed = symmetry == "skew-symmetric"
    return Graph.from_adjacency(matrix, name=name or _stem(path), directed=directed)


def save_mtx(graph: Graph, path: str | Path, *, comment: str | None = None) -> None:
    """Writes ``graph``'s adjacency as a Matrix Market coordinate file.

    Undirected graphs are written ``symmetric`` (the lower triangle), directed ones
    ``general``; the field is ``pattern`` when every value is 1, ``integer`` for integer
    dtypes and ``real`` otherwise (with enough digits to read the same value back).

    Args:
      graph: the graph (an undirected one must have a symmetric adjacency).
      path: the file (``.gz`` for gzip).
      comment: a comment line after the banner (default: the graph's name).

    Example:
      >>> import pathlib, tempfile
      >>> from dp2ejax.graph.generators import networkx_graph
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "karate.mtx"
      >>> save_mtx(networkx_graph("karate_club"), path)
      >>> path.read_text().splitlines()[:3]
      ['%%MatrixMarket matrix coordinate pattern symmetric', '% karate_club', '34 34 78']
    """
    rows, cols, data = _edges_to_write(graph, lower=True)
    if np.all(data == 1):
        field = "pattern"
    elif np.issubdtype(data.dtype, np.integer):
        field = "integer"
    else:
        field = "real"
    symmetry = "general" if graph.directed else "symmetric"
    n = graph.num_nodes
    with _open_text(Path(path), "w") as f:
        f.write(f"%%MatrixMarket matrix coordinate {field} {symmetry}\n")
        text = graph.name if comment is None else comment
        for line in text.splitlines() or [""]:
            f.write(f"% {line}\n")
        f.write(f"{n} {n} {len(rows)}\n")
        if field == "pattern":
            body = [f"{i + 1} {j + 1}" for i, j in zip(rows.tolist(), cols.tolist(), strict=True)]
        else:
            fmt = "%d" if field == "integer" else _value_format(data.dtype)
            body = [f"{i + 1} {j + 1} {fmt % w}" for i, j, w in zip(
                rows.tolist(), cols.tolist(), data.tolist(), strict=True)]
        f.write("\n".join(body) + ("\n" if body else ""))


# --- npz -----------------------------------------------------------------------------------------


def load_npz(
    path: str | Path,
    *,
    dtype: Any = None,
    directed: bool | None = None,
    name: str | None = None,
) -> Graph:
    """Reads a graph from an ``.npz`` archive.

    Accepted layouts: a ``scipy.sparse.save_npz`` file (any format it writes); NumPy arrays
    ``indptr``, ``indices``, ``data``, ``shape`` (CSR); or ``row``, ``col`` and optionally
    ``data`` and ``shape`` (COO; without ``shape`` the size is the largest id plus one, without
    ``data`` every edge weighs 1). Optional arrays: ``features`` ``[n, f]``, ``labels`` ``[n]``,
    and the metadata :func:`save_npz` writes (``name``, ``directed``, ``num_classes``).

    Args:
      path: the file.
      dtype: the adjacency's value dtype (``None`` keeps the file's).
      directed: whether the graph is directed; ``None``: the file's ``directed`` entry, else
        directed unless the adjacency is symmetric.
      name: the graph's name (default: the file's ``name`` entry, else the file name).

    Returns:
      The ``Graph``.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: not an ``.npz`` archive, missing keys (the message lists the keys found), or
        arrays that do not form a valid square sparse matrix.

    Example:
      >>> import pathlib, tempfile
      >>> import numpy as np
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "g.npz"
      >>> np.savez(path, row=np.array([0, 1]), col=np.array([1, 2]))
      >>> g = load_npz(path)
      >>> g.num_nodes, g.num_edges, g.directed
      (3, 2, True)
    """
    import scipy.sparse as sp

    path = _existing(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any failure here means "not an npz archive"
        raise ValueError(f"{path}: not a readable .npz archive ({e})") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: expected an .npz archive, found a single .npy array")
    with archive:
        keys = set(archive.files)
        try:
            if "format" in keys:
                matrix = sp.load_npz(path)
            elif {"indptr", "indices", "data", "shape"} <= keys:
                shape = tuple(int(s) for s in archive["shape"])
                matrix = sp.csr_array(
                    (archive["data"], archive["indices"], archive["indptr"]), shape=shape
                )
                matrix.check_format(full_check=True)
            elif {"row", "col"} <= keys:
                matrix = _coo_from_archive(path, archive, keys)
            else:
                raise KeyError
        except KeyError:
            raise ValueError(
                f"{path}: expected the keys of scipy.sparse.save_npz, or indptr, indices, data, "
                f"shape (CSR), or row, col [, data, shape] (COO); found: "
                f"{', '.join(sorted(keys)) or 'none'}"
            ) from None
        except (ValueError, TypeError, IndexError, NotImplementedError) as e:
            raise ValueError(f"{path}: the arrays do not form a sparse matrix: {e}") from e
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"{path}: expected a square adjacency, got shape {matrix.shape}")
        features = archive["features"] if "features" in keys else None
        labels = archive["labels"] if "labels" in keys else None
        if directed is None and "directed" in keys:
            directed = bool(archive["directed"])
        num_classes = int(archive["num_classes"]) if "num_classes" in keys else None
        if num_classes is not None and num_classes < 0:
            num_classes = None
        if name is None and "name" in keys:
            name = str(archive["name"])
    try:
        return Graph.from_adjacency(matrix, features, labels, name=name or _stem(path),
                                    directed=directed, num_classes=num_classes, dtype=dtype)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def save_npz(graph: Graph, path: str | Path, *, compressed: bool = True) -> None:
    """Writes ``graph`` (adjacency, features, labels, metadata) to an ``.npz`` archive.

    The adjacency is stored as ``scipy.sparse.save_npz`` stores a ``csr_array``, so
    ``scipy.sparse.load_npz`` reads the file too; ``features``, ``labels``, ``name``,
    ``directed`` and ``num_classes`` sit beside it.

    Args:
      graph: the graph.
      path: the file (written as given, with no extension added).
      compressed: compress the archive (``np.savez_compressed``).

    Example:
      >>> import pathlib, tempfile
      >>> from dp2ejax.graph.generators import networkx_graph
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "karate.npz"
      >>> save_npz(networkx_graph("karate_club"), path)
      >>> load_npz(path).labels.shape
      (34,)
    """
    m = graph.adjacency.to_scipy()
    arrays: dict[str, Any] = dict(
        format=np.bytes_(b"csr"), shape=np.asarray(m.shape), data=m.data, indices=m.indices,
        indptr=m.indptr, _is_array=np.bool_(True), name=np.str_(graph.name),
        directed=np.bool_(graph.directed),
        num_classes=np.int64(-1 if graph.num_classes is None else graph.num_classes),
    )
    if graph.features is not None:
        arrays["features"] = np.asarray(graph.features)
    if graph.labels is not None:
        arrays["labels"] = np.asarray(graph.labels)
    with open(path, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)


# --- by extension --------------------------------------------------------------------------------


def load_graph(path: str | Path, **kwargs: Any) -> Graph:
    """Reads a graph, choosing the loader from the file's extension.

    Edge lists: ``.txt``, ``.edges``, ``.el``, ``.csv``, ``.tsv`` (:func:`load_edge_list`);
    Matrix Market: ``.mtx`` (:func:`load_mtx`); ``.npz`` (:func:`load_npz`). Text formats may
    end in ``.gz``.

    Args:
      path: the file.
      **kwargs: passed to the loader.

    Returns:
      The ``Graph``.

    Example:
      >>> import pathlib, tempfile
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "g.csv"
      >>> _ = path.write_text("0,1\\n1,2\\n")
      >>> load_graph(path, directed=True).num_edges
      2
    """
    return _by_suffix(path, (load_edge_list, load_mtx, load_npz))(path, **kwargs)


def save_graph(graph: Graph, path: str | Path, **kwargs: Any) -> None:
    """Writes a graph, choosing the writer from the file's extension (see :func:`load_graph`).

    ``.csv`` edge lists are comma-separated, ``.tsv`` ones tab-separated, unless ``delimiter``
    is given.

    Args:
      graph: the graph.
      path: the file.
      **kwargs: passed to the writer.
    """
    writer = _by_suffix(path, (save_edge_list, save_mtx, save_npz))
    suffix = _format_suffix(Path(path))
    if writer is save_edge_list and suffix in (".csv", ".tsv"):
        kwargs.setdefault("delimiter", "," if suffix == ".csv" else "\t")
    writer(graph, path, **kwargs)


def _by_suffix(path, functions):
    suffix = _format_suffix(Path(path))
    gz = Path(path).suffix.lower() == ".gz"
    for suffixes, function in zip((EDGE_LIST_SUFFIXES, MTX_SUFFIXES, NPZ_SUFFIXES), functions,
                                  strict=True):
        if suffix in suffixes and not (gz and suffixes is NPZ_SUFFIXES):
            return function
    known = EDGE_LIST_SUFFIXES + MTX_SUFFIXES + NPZ_SUFFIXES
    raise ValueError(f"path: unknown graph file extension {''.join(Path(path).suffixes)!r} of "
                     f"{path}; known: {', '.join(known)} (text formats also with .gz)")


# --- helpers -------------------------------------------------------------------------------------


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return path


def _open_text(path: Path, mode: str) -> IO[str]:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def _format_suffix(path: Path) -> str:
    """The extension naming the format: ``.txt`` for ``g.txt`` and ``g.txt.gz``."""
    if path.suffix.lower() == ".gz":
        path = path.with_suffix("")
    return path.suffix.lower()


def _stem(path: Path) -> str:
    name = path.name
    if path.suffix.lower() == ".gz":
        name = path.with_suffix("").name
    return Path(name).stem


def _parse_node_id(token: str, where: str, num_nodes: int | None) -> int:
    try:
        value = int(token)
    except ValueError:
        raise ValueError(f"{where}: non-integer node id {token!r}") from None
    if value < 0:
        raise ValueError(f"{where}: negative node id {value} (ids are 0-based)")
    if num_nodes is not None and value >= num_nodes:
        raise ValueError(f"{where}: node id {value} out of range for num_nodes={num_nodes}")
    return value


def _parse_int(token: str, where: str, what: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise ValueError(f"{where}: non-integer {what} {token!r}") from None


def _parse_float(token: str, where: str, what: str, finite: bool = True) -> float:
    try:
        value = float(token)
    except ValueError:
        raise ValueError(f"{where}: non-numeric {what} {token!r}") from None
    if finite and not np.isfinite(value):
        raise ValueError(f"{where}: non-finite {what} {token!r}")
    return value


def _parse_mtx_index(token: str, where: str, what: str, n: int) -> int:
    value = _parse_int(token, where, f"{what} index")
    if not 1 <= value <= n:
        raise ValueError(f"{where}: {what} index {value} out of range 1..{n} (Matrix Market "
                         "indices are 1-based)")
    return value


def _read_banner(path: Path, lines: Iterator[tuple[int, str]]) -> tuple[str, str]:
    lineno, raw = next(lines, (1, ""))
    tokens = raw.lower().split()
    where = f"{path}, line {lineno}"
    if len(tokens) != 5 or tokens[0] != "%%matrixmarket" or tokens[1] != "matrix":
        raise ValueError(f"{where}: expected the banner '%%MatrixMarket matrix coordinate "
                         f"<field> <symmetry>', got {raw.strip()!r}")
    _, _, layout, field, symmetry = tokens
    if layout != "coordinate":
        raise ValueError(f"{where}: unsupported layout {layout!r}; only 'coordinate' (sparse) "
                         "files are read")
    if field not in ("real", "integer", "pattern"):
        raise ValueError(f"{where}: unsupported field {field!r}; known: real, integer, pattern")
    if symmetry not in ("general", "symmetric", "skew-symmetric"):
        raise ValueError(f"{where}: unsupported symmetry {symmetry!r}; known: general, "
                         "symmetric, skew-symmetric")
    return field, symmetry


def _read_size_line(path: Path, lines) -> tuple[int, tuple[int, int, int]]:
    lineno = 1
    for lineno, raw in lines:
        line = raw.strip()
        if not line or line.startswith("%"):
            continue
        where = f"{path}, line {lineno}"
        fields = line.split()
        if len(fields) != 3:
            raise ValueError(f"{where}: expected the size line 'rows cols entries', got "
                             f"{line!r}")
        sizes = tuple(_parse_int(t, where, "size") for t in fields)
        if min(sizes) < 0:
            raise ValueError(f"{where}: negative size in {line!r}")
        return lineno, sizes
    raise ValueError(f"{path}, line {lineno + 1}: missing the size line 'rows cols entries'")


def _coo_from_archive(path: Path, archive, keys: set[str]):
    import scipy.sparse as sp

    row = np.asarray(archive["row"]).ravel()
    col = np.asarray(archive["col"]).ravel()
    if len(row) != len(col):
        raise ValueError(f"row and col differ in length ({len(row)} != {len(col)})")
    if not (np.issubdtype(row.dtype, np.integer) and np.issubdtype(col.dtype, np.integer)):
        raise ValueError(f"row and col must be integer arrays, got {row.dtype} and {col.dtype}")
    data = np.asarray(archive["data"]) if "data" in keys else np.ones(len(row), np.float32)
    if len(data) != len(row):
        raise ValueError(f"data has {len(data)} entries, row and col {len(row)}")
    if len(row) and min(row.min(), col.min()) < 0:
        raise ValueError("negative node ids in row or col")
    if "shape" in keys:
        shape = tuple(int(s) for s in archive["shape"])
        if len(row) and max(row.max(), col.max()) >= max(shape):
            raise ValueError(f"node id {max(row.max(), col.max())} out of range for shape "
                             f"{shape}")
    else:
        n = int(max(row.max(), col.max())) + 1 if len(row) else 0
        shape = (n, n)
    return sp.csr_array((data, (row, col)), shape=shape)


def _graph_from_edges(rows, cols, data, n: int, directed: bool, *, name: str) -> Graph:
    """A graph from edge arrays: repeated edges keep the last value; undirected ones mirrored."""
    import scipy.sparse as sp

    u, v = rows, cols
    if not directed:
        u, v = np.minimum(rows, cols), np.maximum(rows, cols)
    keys = u * max(n, 1) + v
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    last = order[np.concatenate([keys[1:] != keys[:-1], [True]])] if len(keys) else order
    u, v, data = u[last], v[last], data[last]
    if not directed:
        off = u != v
        u, v = np.concatenate([u, v[off]]), np.concatenate([v, u[off]])
        data = np.concatenate([data, data[off]])
    matrix = sp.csr_array((data, (u, v)), shape=(n, n))
    return Graph.from_adjacency(matrix, name=name, directed=directed)


def _edges_to_write(graph: Graph, *, lower: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edge arrays (row-major order) to write: undirected graphs keep one triangle."""
    m = graph.adjacency.to_scipy().tocoo()
    rows, cols, data = m.row.astype(np.int64), m.col.astype(np.int64), m.data
    if not graph.directed:
        if not _is_symmetric(graph.adjacency):
            raise ValueError(f"graph: {graph.name!r} is undirected but its adjacency is not "
                             "symmetric; mark it directed to write every entry")
        keep = rows >= cols if lower else rows <= cols
        rows, cols, data = rows[keep], cols[keep], data[keep]
    order = np.lexsort((cols, rows))
    return rows[order], cols[order], data[order]


def _value_format(dtype) -> str:
    if np.issubdtype(dtype, np.integer):
        return "%d"
    if np.dtype(dtype).itemsize <= 4:
        return "%.9g"
    return "%.17g"
