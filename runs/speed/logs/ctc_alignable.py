"""Share of clips whose transcript character CTC cannot align at 25 encoder frames/s with k = 1 and 2 symbols per frame
(the small preset: mel frames / 4; characters plus one blank between repeated ones), by split and source, from
metadata and audio headers alone. Usage: python runs/speed/logs/ctc_alignable.py DATA_DIR..."""
import csv, sys, soundfile as sf, collections
def need(text):
    s=text; return len(s)+sum(a==b for a,b in zip(s,s[1:]))
def frames(sec, k):  # mel frames = 100/s, then 4x down -> 25/s (ceil per stride-2 step)
    m=int(sec*100); 
    for _ in range(2): m=(m+1)//2
    return m*k
for root in sys.argv[1:]:
    rows=list(csv.DictReader(open(f"{root}/metadata.csv")))
    stats=collections.defaultdict(lambda:[0,0,0])
    for r in rows:
        try: info=sf.info(f"{root}/{r['file_name']}")
        except Exception as e: continue
        sec=info.frames/info.samplerate
        t=r['transcription']; n=need(t)
        key=(r['split'],r['source'])
        st=stats[key]; st[0]+=1; st[1]+= frames(sec,1)<n; st[2]+= frames(sec,2)<n
    for k,v in sorted(stats.items()): print(root,k,v[0],"infeasible k=1 %.1f%%  k=2 %.1f%%"%(100*v[1]/v[0],100*v[2]/v[0]))
