"""`python -m moesim.db` loads and cross-checks every database entry."""

from ..errors import MoesimError
from . import check_all, models

if __name__ == "__main__":
    try:
        counts = check_all()
    except MoesimError as exc:
        raise SystemExit(f"error: {exc}")
    print(counts)
    for name, m in sorted(models().entries.items()):
        pub = m.published
        line = f"{name:24s} total {m.total_params / 1e9:8.2f}B active {m.active_params() / 1e9:7.2f}B"
        if pub:
            act = m.published_convention_active_params()
            line += (
                f"  published {pub.total_params / 1e9:.1f}B/{pub.active_params / 1e9:.1f}B"
                f"  err {m.total_params / pub.total_params - 1:+.1%}/{act / pub.active_params - 1:+.1%}"
            )
        print(line)
